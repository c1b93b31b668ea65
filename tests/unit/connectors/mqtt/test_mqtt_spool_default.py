"""The MQTT spool is on by default with a recovery directory, off without one or when the spec says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from dte_stream.cli.run import _spool_notes
from dte_stream.connectors.mqtt._ledger import pack_resume_state
from dte_stream.connectors.mqtt._spool import RECORD_OVERHEAD, Spool, SpoolRecord
from dte_stream.connectors.mqtt.source import MqttSource
from dte_stream.errors import ConfigError
from dte_stream.spec import DataflowSpec
from dte_stream.spec.mqtt import DEFAULT_SPOOL_BYTES, MqttSourceSpec, MqttSpoolSpec

BASE: dict[str, Any] = {"kind": "mqtt", "url": "mqtt://127.0.0.1:1883", "subscriptions": [{"topic": "p/#"}]}


def _spec(**fields: Any) -> MqttSourceSpec:
    return MqttSourceSpec(**(BASE | fields))


def test_unset_means_a_default_spool_with_a_recovery_dir_and_none_without(tmp_path: Path) -> None:
    spec = _spec()
    assert spec.spool is None
    settings = spec.spool_settings(tmp_path)
    assert settings == MqttSpoolSpec()
    assert settings.max_bytes == DEFAULT_SPOOL_BYTES == 2**30
    assert spec.spool_settings(None) is None
    source = MqttSource(spec, flow_name="f", recovery_dir=tmp_path)
    assert source.spool == MqttSpoolSpec()
    assert source.spool_dir == tmp_path / "spool"
    bare = MqttSource(spec, flow_name="f")
    assert (bare.spool, bare.spool_dir) == (None, None)


@pytest.mark.parametrize("off", [False, "off", "OFF", "false", "no"])
def test_off_opts_out_even_with_a_recovery_dir(off: object, tmp_path: Path) -> None:
    spec = _spec(spool=off)
    assert spec.spool is False
    assert spec.spool_settings(tmp_path) is None
    assert MqttSource(spec, recovery_dir=tmp_path).spool_dir is None


@pytest.mark.parametrize("on", [True, "on", "true", {}])
def test_on_is_the_default_spool_and_needs_a_folder(on: object, tmp_path: Path) -> None:
    spec = _spec(spool=on)
    assert spec.spool == MqttSpoolSpec()
    with pytest.raises(ConfigError, match="spool needs a folder"):
        MqttSource(spec)
    assert MqttSource(spec, recovery_dir=tmp_path).spool_dir == tmp_path / "spool"


def test_yaml_on_and_off_are_read_as_the_switch() -> None:
    for text, expected in (("off", False), ("on", MqttSpoolSpec()), ("{max_bytes: 64MiB}", None)):
        spec = MqttSourceSpec(**(BASE | yaml.safe_load(f"spool: {text}")))
        if expected is None:
            assert isinstance(spec.spool, MqttSpoolSpec)
            assert spec.spool.max_bytes == 64 * 2**20
        else:
            assert spec.spool == expected


def test_other_ack_modes_run_without_the_default_spool_and_refuse_an_explicit_one(tmp_path: Path) -> None:
    for ack in ("on_emit", "on_receive"):
        assert _spec(ack=ack).spool_settings(tmp_path) is None
        assert _spec(ack=ack, spool="off").spool_settings(tmp_path) is None
        with pytest.raises(ValueError, match="spool: a spooled message is acknowledged once"):
            _spec(ack=ack, spool="on")


def test_bad_spool_values_name_the_field() -> None:
    with pytest.raises(ValueError, match="spool"):
        _spec(spool="sometimes")
    with pytest.raises(ValueError, match="not a size"):
        _spec(spool={"max_bytes": "lots"})


def _fill(folder: Path, count: int) -> tuple[int, int]:
    spool = Spool(folder, max_bytes=1 << 20)
    end = spool.append([SpoolRecord("p/x", b"{}", 1, i + 1, 1, i) for i in range(count)])
    spool.close()
    return end


def test_turning_the_spool_off_over_unread_messages_is_refused(tmp_path: Path) -> None:
    """They were acknowledged: the broker will not send them again, so running on loses them."""
    source = MqttSource(_spec(name="plant", spool="off"), flow_name="f", recovery_dir=tmp_path)
    client = source.client_ids[0]
    folder = tmp_path / "spool" / client
    end = _fill(folder, 5)
    committed = pack_resume_state(
        [], (end[0], end[1] - 2 * (RECORD_OVERHEAD + len("p/x{}")))
    )  # 2 not committed
    with pytest.raises(ConfigError, match=rf"spool is off, but {folder} holds 2 messages"):
        source.build_part("s", "plant-0", committed)
    with pytest.raises(ConfigError, match="holds 5 messages"):  # killed before any commit
        source.build_part("s", "plant-0", None)
    assert folder.is_dir()


def test_turning_the_spool_off_over_a_spool_read_to_its_end_removes_it(tmp_path: Path) -> None:
    """Else a later run with the spool on would read those records again from the oldest one."""
    source = MqttSource(_spec(name="plant", spool=False), recovery_dir=tmp_path)
    folder = tmp_path / "spool" / source.client_ids[0]
    end = _fill(folder, 3)
    source._check_no_spool_left(source.client_ids[0], pack_resume_state([(1, 0)], end))
    assert not folder.exists()
    source._check_no_spool_left(source.client_ids[0], pack_resume_state([(1, 0)], end))  # nothing left


def _flow(tmp_path: Path, **source: Any) -> DataflowSpec:
    return DataflowSpec.model_validate(
        {
            "name": "f",
            "sources": [BASE | {"name": "plant", "twin_type": "pump"} | source],
            "twin_types": [{"name": "pump", "channels": {"temperature": {}}}],
            "sinks": [{"kind": "local_store", "data_dir": str(tmp_path / "data")}],
        }
    )


def test_run_says_where_the_spool_is_and_what_its_absence_risks(tmp_path: Path) -> None:
    notes = _spool_notes(_flow(tmp_path), tmp_path / "rec")
    assert notes == [
        f"source plant: disk spool in {tmp_path / 'rec' / 'spool'}, up to 1,073,741,824 bytes per client"
    ]
    (note,) = _spool_notes(_flow(tmp_path), None)
    assert "no disk spool without --recovery-dir" in note
    assert "drops past its limit" in note
    assert _spool_notes(_flow(tmp_path, spool="off"), tmp_path / "rec") == []
    assert _spool_notes(_flow(tmp_path, ack="on_emit"), None) == []
