"""The example of docs/whatif.md: a room heated by a heater whose set point is a control input.

Run it from the repository root: ``python docs/examples/whatif_room.py`` (writes docs/img/whatif_room.png).
"""

import math
import tempfile
from pathlib import Path

import numpy as np

from dte_stream.cli.whatif import plot_whatif
from dte_stream.readings import ReadingBatch
from dte_stream.spec.twins import TwinTypeSpec
from dte_stream.twins.bank import TwinBank
from dte_stream.twins.routing import TypedBatch
from dte_stream.view import TwinView, ViewPublisher
from dte_stream.whatif import Scenario, simulate

room = TwinTypeSpec.model_validate(
    {
        "name": "room",
        "channels": {"temp": {"unit": "degC"}, "heater": {}},
        "models": [
            {
                "name": "air",
                "observes": ["temp"],
                "controls": ["heater"],
                "preset": {"model": "thermal", "tau": "10m", "noise": 0.002, "measurement_noise": 0.04},
            }
        ],
        "alerts": {
            "rules": [
                {
                    "kind": "threshold",
                    "name": "too_warm",
                    "channels": ["temp"],
                    "signal": "estimate",
                    "above": 28,
                    "holds_for": "2m",
                }
            ]
        },
    }
)
bank, rng, x = TwinBank(room), np.random.default_rng(1), 18.0
S = 10**9
T0 = 1_796_112_000 * S  # 2026-12-01T08:00:00Z


def feed(twin, chan, t, v):
    rb = ReadingBatch.from_columns([twin], [chan], [t], [v])
    return bank.update(TypedBatch("room", rb, np.array([room.channel_names().index(chan)])), now_ns=t)


view = TwinView.open(tempfile.mkdtemp())
view.put_types([room.model_dump(mode="json")])
pub = ViewPublisher(view)
pub.note(feed("room-1", "heater", T0, 24.0))
for k in range(1, 61):  # an hour of readings, one a minute, heater set point 24
    x = 24 + (x - 24) * math.exp(-60 / 600) + rng.normal(0, math.sqrt(0.002 * 60))
    pub.note(feed("room-1", "temp", T0 + k * 60 * S, x + rng.normal(0, 0.2)))
pub.publish(bank, None, now_ns=T0 + 61 * 60 * S, force=True)
record = view.get_twin("room-1")
result = simulate(
    room,
    record,
    horizon_s=3600,
    step_s=30,
    samples=1000,
    seed=3,
    scenario=Scenario(controls={"heater": [(0, 24.0), (600, 32.0)]}),
)
r = result.rules[0]
print(
    f"{r['rule']}: {100 * r['probability']:.0f} % within the hour, "
    f"median {r['median_s']:.0f} s, p90 {r['p90_s']:.0f} s"
)
plot_whatif(result, room, Path("docs/img/whatif_room.png"))
