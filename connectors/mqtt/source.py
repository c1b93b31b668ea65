"""The MQTT source: one Bytewax partition per MQTT client, each with its persistent session.

:class:`MqttSource` is the Bytewax contract (parts, resume state, delivery guarantee) and
decides each client's spool (on by default with a recovery directory); the partition itself,
which receives, batches, spools and acknowledges, is :mod:`._partition`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bytewax.inputs import FixedPartitionedSource

from dte_stream.batches import RawBatch
from dte_stream.connectors.mqtt._client import LOG
from dte_stream.connectors.mqtt._ledger import ResumeState, unpack_resume_state
from dte_stream.connectors.mqtt._partition import MqttPartition
from dte_stream.connectors.mqtt._spool import START
from dte_stream.connectors.mqtt._spooled import unread_messages
from dte_stream.errors import ConfigError, ConnectorError
from dte_stream.spec.mqtt import MqttSourceSpec

__all__ = ["MqttSource"]


class MqttSource(FixedPartitionedSource[RawBatch, ResumeState | None]):
    """Payloads from MQTT subscriptions, one :class:`~dte_stream.batches.RawBatch` per subscription.

    Each of ``spec.clients`` MQTT clients is one Bytewax partition (key ``{name}-{i}``, client
    id ``{client_id}-{i}``: the same id on every run, whichever worker runs it, so the broker
    finds the session again). Bytewax spreads the clients over workers and processes; with
    more than one, shared subscriptions (``$share/GROUP/...``) split the messages among them.

    Delivery with QoS 1, ``clean_start`` off and a ``session_expiry`` the broker honours:

    * ``ack: after_epoch`` (default): a message is acknowledged once the Bytewax epoch that
      carried it is complete, i.e. every sink's ``write_batch`` for it returned. A crash or a
      kill at any point loses nothing: the broker delivers every unacknowledged message again
      (at-least-once; the InfluxDB and local-store sinks make the repeats harmless). MQTT 5
      ``receive_maximum`` caps the messages awaiting their epoch, so throughput per client is
      at most ``receive_maximum / epoch length``.
    * ``ack: on_emit``: acknowledged when handed to the dataflow; a crash loses what the
      dataflow held in flight (at most an epoch).
    * ``ack: on_receive``: paho acknowledges on arrival; a crash also loses the queue.

    A graceful stop (:func:`~dte_stream.shutdown.stop_requested`, ``stop_after_*``) loses
    nothing in any mode, and after it messages published while dte-stream was down are
    delivered on the next start. A reconnect or a broker restart repeats nothing: what the
    broker sends again is recognised and dropped (:mod:`._ledger`). QoS 0 subscriptions are
    at-most-once.

    The disk spool (``spec.spool``; :mod:`._spooled`) is on by default when ``recovery_dir``
    is given and ``ack`` is ``after_epoch``: each client spools to
    ``<recovery_dir>/spool/<client id>/`` while a sink holds the dataflow, and acknowledges a
    message once it is on disk. Without ``recovery_dir`` there is none unless the spec sets
    ``spool.path``; ``spool: off`` turns it off.

    >>> from dte_stream.spec.mqtt import MqttSourceSpec
    >>> spec = MqttSourceSpec(kind="mqtt", name="plant", url="mqtt://127.0.0.1:1883", clients=2,
    ...                       subscriptions=[{"topic": "$share/dte/plant/#"}])
    >>> MqttSource(spec, flow_name="demo").list_parts(), spec.client_ids("demo")
    (['plant-0', 'plant-1'], ['dte-demo-plant-0', 'dte-demo-plant-1'])
    """

    def __init__(
        self, spec: MqttSourceSpec, *, flow_name: str | None = None, recovery_dir: Path | None = None
    ) -> None:
        self.spec = spec
        self.client_ids = spec.client_ids(flow_name)
        self.recovery_dir = recovery_dir
        #: the spool the clients run with (on by default with a recovery directory)
        self.spool = spec.spool_settings(recovery_dir)
        self.spool_dir: Path | None = None
        if self.spool is not None:
            self.spool_dir = self.spool.path or (recovery_dir / "spool" if recovery_dir is not None else None)
            if self.spool_dir is None:
                raise ConfigError(
                    f"source {spec.name}: spool needs a folder: set spool.path, or run with --recovery-dir "
                    "(the spool then lives in <recovery dir>/spool)"
                )

    def list_parts(self) -> list[str]:
        """One partition per client: ``{name}-0`` ... ``{name}-{clients-1}``."""
        return [f"{self.spec.name}-{i}" for i in range(self.spec.clients)]

    def build_part(self, step_id: str, for_part: str, resume_state: ResumeState | None) -> MqttPartition:
        """Connect the client of ``for_part``; a broker that refuses is a ConnectorError."""
        name, _, index_text = for_part.rpartition("-")
        if name != self.spec.name or not index_text.isdigit() or int(index_text) >= self.spec.clients:
            raise ConnectorError(
                f"source {self.spec.name}: the recovery state names partition {for_part!r}, which this "
                f"spec (clients: {self.spec.clients}) does not have; use a fresh recovery directory"
            )
        client_id = self.client_ids[int(index_text)]
        if self.spool is None or self.spool_dir is None:
            self._check_no_spool_left(client_id, resume_state)
            return MqttPartition(self.spec, client_id, resume_state)
        if self.spec.spool is None:
            LOG.info(
                "source %s (client %s): spooling to %s (max_bytes %d; the default with --recovery-dir, "
                "spool: off turns it off)",
                self.spec.name,
                client_id,
                self.spool_dir / client_id,
                self.spool.max_bytes,
            )
        return MqttPartition(self.spec, client_id, resume_state, (self.spool_dir, self.spool.max_bytes))

    def _check_no_spool_left(self, client_id: str, resume_state: ResumeState | None) -> None:
        """Without a spool, refuse to start over one that holds messages no committed epoch applied.

        Those were acknowledged to the broker, which will not send them again: running on would
        lose them. A spool that was read to its end is deleted (a later run with the spool on
        must not read its records a second time).
        """
        position = unpack_resume_state(resume_state)[1] if resume_state is not None else None
        folder = self.recovery_dir / "spool" / client_id if self.recovery_dir is not None else None
        if folder is None or not folder.is_dir():
            if position is not None:
                LOG.warning(
                    "source %s (client %s): the recovery state was written with a spool, which is off "
                    "now; messages it held that no committed epoch applied are not read",
                    self.spec.name,
                    client_id,
                )
            return
        unread = unread_messages(folder, position or START)
        if unread:
            raise ConfigError(
                f"source {self.spec.name}: spool is off, but {folder} holds {unread:,} messages of an "
                "earlier run that no committed epoch applied (the broker has their acknowledgements "
                "and will not send them again): run with the spool on until they are read, or delete "
                "the folder to drop them"
            )
        shutil.rmtree(folder)
        LOG.info(
            "source %s (client %s): removed %s, read to its end (spool: off)",
            self.spec.name,
            client_id,
            folder,
        )
