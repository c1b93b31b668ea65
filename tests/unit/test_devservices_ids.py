"""deploy/services/devservices.py: the Kafka cluster id it formats storage with."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from unittest import mock

DEVSERVICES = Path(__file__).resolve().parents[2] / "deploy" / "services" / "devservices.py"


def _devservices() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dte_devservices_ids", DEVSERVICES)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_a_cluster_id_never_starts_with_a_dash() -> None:
    """Kafka's storage tool reads ``-t -Abc...`` as an option and refuses to format: the id is
    drawn again. The first draw here starts with a dash (bytes 0xf8... encode to ``-``)."""
    devservices = _devservices()
    draws = [b"\xf8" + bytes(15), bytes(range(16))]
    with mock.patch.object(devservices.os, "urandom", side_effect=draws):
        cluster_id = devservices._kafka_cluster_id()
    assert cluster_id == "AAECAwQFBgcICQoLDA0ODw"
    assert all(not devservices._kafka_cluster_id().startswith("-") for _ in range(2000))
