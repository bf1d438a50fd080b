"""End to end: the coarse_to_fine plan finds a supercrystal it does not know and scans it finely.

A RunEngine drives the simulated beamline (ophyd.sim stage, simulated EIGER, document log) while
the real service analyses the stream, places the frames on the run grids and answers the
steering endpoint. The sample: a rotated rounded-rectangle supercrystal at an offset the plan is
not told, inside a 40 x 40 um area; the detector sees bright SAXS inside it and faint outside.
A coarse 11 x 11 raster, then the suggested 1 um scans until nothing new is suggested; the fine
scans must cover >= 95 % of the crystal's area with <= 30 % of their points outside it, using
< 40 % of the points of a full 1 um raster of the area.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import small_detector

from simulators.beamline import SimulatedBeamline
from simulators.beamline_frames import uniform_frames
from simulators.beamline_plans import step_grid
from simulators.beamline_stage import sim_stage
from simulators.eiger_files import EigerMetadata
from simulators.supercrystal import SupercrystalModel, rounded_rectangle_depth_um
from stream.service import Service, ServiceConfig
from stream.steering_client import SteeringClient, SteeringError
from stream.steering_plan import coarse_to_fine

pytestmark = pytest.mark.timeout(300)

METADATA = EigerMetadata(shape=small_detector.SHAPE, dtype="uint32", wavelength_m=8.984e-11, pixel_size_m=75e-6)
AREA_UM = 40.0
COARSE = (11, 11)
FINE_STEP_UM = 1.0
CRYSTAL = SupercrystalModel(size_um=(14.0, 16.0), rotation_deg=25.0, corner_radius_um=3.0)
CRYSTAL_CENTRE_UM = (14.2, 25.9)  # (y, x): the plan is never told


def inside_crystal(y_um, x_um) -> np.ndarray:
    return rounded_rectangle_depth_um(y_um, x_um, CRYSTAL, CRYSTAL_CENTRE_UM) > 0


def counts_at(y_um: float, x_um: float) -> int:
    return 400 if inside_crystal(y_um, x_um) else 10


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return small_detector.write_setup(tmp_path_factory.mktemp("steering_detector"))


@pytest.fixture(scope="module")
def beamline():
    with SimulatedBeamline(METADATA, uniform_frames(METADATA, counts_at), sim_stage(), first_series_id=40) as line:
        line.detector.peer_timeout_s = 60.0
        yield line


@pytest.fixture(scope="module")
def service(setup, beamline):
    config = ServiceConfig(setup=setup, detector_endpoint=beamline.stream_endpoint, protocol="v1",
                           documents_endpoint=beamline.documents_endpoint, documents_settle_s=3.0,
                           steering_endpoint="tcp://127.0.0.1:0", detail_endpoint=None, series_timeout_s=20.0)
    with Service(config) as running:
        yield running


def scanned_points(rounds) -> np.ndarray:
    """(n, 2) (y, x) positions of every point of the fine scans, um."""
    points = []
    for suggestions in rounds:
        for s in suggestions:
            slow, fast = s["motors"]
            ys = np.linspace(slow["start_um"], slow["stop_um"], slow["num"])
            xs = np.linspace(fast["start_um"], fast["stop_um"], fast["num"])
            yy, xx = np.meshgrid(ys, xs, indexing="ij")
            points.append(np.column_stack([yy.ravel(), xx.ravel()]))
    return np.concatenate(points)


def covered_fraction(points: np.ndarray, step_um: float) -> float:
    """Fraction of the crystal's area (sampled every 0.1 um) inside the cell of a scanned point."""
    grid = np.arange(-step_um, AREA_UM + step_um, 0.1)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    inside = inside_crystal(yy, xx)
    cells = {(int(round(y / step_um)), int(round(x / step_um))) for y, x in points}
    hit = [(int(np.floor(y / step_um + 0.5)), int(np.floor(x / step_um + 0.5))) in cells
           for y, x in zip(yy[inside], xx[inside])]
    return float(np.mean(hit))


@pytest.fixture(scope="module")
def steered(service, beamline):
    """Run the plan once: (its summary, the start documents of its runs)."""
    starts = []
    token = beamline.RE.subscribe(lambda name, doc: starts.append(doc) if name == "start" else None)
    detector = beamline.detector
    summary = {}

    def plan():
        summary.update((yield from coarse_to_fine(
            beamline.slow, beamline.fast, ((0.0, AREA_UM), (0.0, AREA_UM)), COARSE,
            SteeringClient(service.steering_endpoint, timeout_s=60.0),
            raster=functools.partial(step_grid, detector), strategies=["crystal"], fine_step_um=FINE_STEP_UM,
            series_of=lambda: int(detector.series_id.get()), max_rounds=6, wait_s=90.0,
            request_options={"overhead_per_point_s": 0.0})))

    beamline.RE(plan())
    beamline.RE.unsubscribe(token)
    return summary, starts


def test_coarse_to_fine_finds_and_covers_the_unknown_crystal(service, steered):
    summary, starts = steered
    assert summary["stopped"] == "nothing new suggested", summary["stopped"]
    points = scanned_points(summary["rounds"])
    coverage = covered_fraction(points, FINE_STEP_UM)
    outside = float(np.mean(~inside_crystal(points[:, 0], points[:, 1])))
    full_raster = (AREA_UM / FINE_STEP_UM + 1) ** 2
    print(f"rounds {len(summary['rounds'])}, scans {sum(map(len, summary['rounds']))}, points {len(points)} "
          f"({len(points) / full_raster:.1%} of a full fine raster), coverage {coverage:.1%}, outside {outside:.1%}")
    assert coverage >= 0.95
    assert outside <= 0.30
    assert len(points) < 0.40 * full_raster
    assert len({tuple(p) for p in np.round(points, 6)}) == len(points), "a point was scanned twice"

    # every run says why it was made
    coarse = [d for d in starts if d.get("braggmap_steering", {}).get("role") == "coarse"]
    fine = [d for d in starts if d.get("braggmap_steering", {}).get("role") == "fine"]
    assert len(coarse) == 1 and len(fine) == sum(map(len, summary["rounds"]))
    for doc in fine:
        record = doc["braggmap_steering"]
        assert record["strategies"] == ["crystal"] and 0 < record["score"] <= 1
        assert "points wanted" in record["reason"] and record["basis_series_id"] == summary["coarse_series"]
        assert list(doc["shape"]) == [record["motors"][0]["num"], record["motors"][1]["num"]]

    # asking again: nothing new; the service's map of the last fine scan sits on the real axes
    client = SteeringClient(service.steering_endpoint)
    again = client.suggest(strategies=["crystal"], fine_step_um=FINE_STEP_UM, series_id=summary["coarse_series"])
    assert again["suggestions"] == [] and "nothing new to scan" in again["notes"]
    status = client.status()
    finished = [s for s in status["series"] if s["final"]]
    assert len(finished) == 1 + len(fine)
    assert all(s["grid"]["axis_names"] == ["sample_y", "sample_x"] for s in finished)


def test_bad_requests_get_clear_errors(service, steered):
    client = SteeringClient(service.steering_endpoint)
    cases = [
        ({"strategies": ["telepathy"]}, "unknown steering strategy 'telepathy'"),
        ({"strategies": ["crystal"], "series_id": 9999}, "no maps of series 9999"),
        ({"strategies": ["crystal"], "limits_um": {"sample_x": [50.0, 60.0]}}, "leave no point of the mapped area"),
        ({"strategies": ["crystal"], "limits_um": {"sample_x": [5.0, 1.0]}}, "must be below high"),
        ({"strategies": ["crystal"], "limits_um": {"sample_z": [0.0, 1.0]}}, "map's motors are sample_y, sample_x"),
        ({"strategies": [{"name": "gradient"}]}, "needs the option parameter"),
        ({"strategies": [{"name": "crystal", "margin": 1}]}, "has no option margin"),
        ({"strategies": ["crystal"], "fine_step_um": -1}, "fine_step_um=-1 must be a positive number"),
        ({"strategies": ["user"]}, "no region was drawn"),
        ({"strategies": ["crystal"], "colour": "red"}, "unknown request field(s) colour"),
        ({"command": "dance"}, "unknown command 'dance'"),
    ]
    for body, message in cases:
        with pytest.raises(SteeringError) as caught:
            client.request({"command": "suggest", **body})
        assert message in str(caught.value), (body, str(caught.value))
    # garbage on the socket: an error reply, and the endpoint still answers
    import zmq

    raw = zmq.Context.instance().socket(zmq.REQ)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(service.steering_endpoint)
    raw.send(b"\xff\xfe not json")
    assert raw.poll(10000)
    assert b"not JSON" in raw.recv()
    raw.close()
    assert client.status()["errors"] >= len(cases) + 1


def test_user_region_from_the_viewer_is_suggested_as_drawn(service, steered):
    summary, _ = steered
    client = SteeringClient(service.steering_endpoint)
    client.request({"command": "clear_regions"})
    client.add_region((2.0, 6.0), (30.0, 33.0), series_id=summary["coarse_series"])
    reply = client.suggest(strategies=["user"], fine_step_um=0.5, series_id=summary["coarse_series"])
    (only,) = reply["suggestions"]
    slow, fast = only["motors"]
    assert (slow["start_um"], slow["stop_um"], slow["num"]) == (30.0, 33.0, 7)
    assert (fast["start_um"], fast["stop_um"], fast["num"]) == (2.0, 6.0, 9)
    assert only["strategies"] == ["user"] and only["score"] == 1.0 and "drawn by the user" in only["reason"]
    assert only["args"] == ["sample_y", 30.0, 33.0, 7, "sample_x", 2.0, 6.0, 9]
    client.request({"command": "clear_regions"})


# -- the plan's own logic, against a scripted steering endpoint --------------------------------------
class ScriptedSteering:
    """Answers ``suggest`` from a list of replies and records the requests."""

    def __init__(self, replies):
        self.replies, self.requests = list(replies), []

    def suggest(self, **fields):
        self.requests.append(fields)
        return self.replies.pop(0)


def suggestion(y0, y1, ny, x0, x1, nx, name="s"):
    return {"id": name, "motors": [{"name": "motor1", "start_um": y0, "stop_um": y1, "num": ny},
                                   {"name": "motor2", "start_um": x0, "stop_um": x1, "num": nx}],
            "kwargs": {"snake_axes": True}, "strategies": ["crystal"], "score": 0.9, "reason": "test",
            "estimated_time_s": 1.0}


def reply(*suggestions, deferred=()):
    return {"basis_series_id": 5, "suggestions": list(suggestions), "deferred": list(deferred)}


def run_plan(steering, **options):
    from bluesky import RunEngine
    from ophyd.sim import det, motor1, motor2

    engine = RunEngine({}, call_returns_result=False)
    starts = []
    engine.subscribe(lambda name, doc: starts.append(doc) if name == "start" else None)
    summary = {}

    def plan():
        summary.update((yield from coarse_to_fine(motor1, motor2, ((0, 4), (0, 4)), (3, 3), steering,
                                                  detectors=[det], **options)))

    engine(plan())
    return summary, starts


def test_approval_runs_only_what_was_approved_and_refusal_ends_the_plan():
    first, second = suggestion(0, 1, 2, 0, 1, 2, "a"), suggestion(2, 3, 2, 2, 3, 2, "b")
    seen = []

    def approve(suggestions):
        seen.append([s["id"] for s in suggestions])
        return [s for s in suggestions if s["id"] == "b"] if len(seen) == 1 else []

    steering = ScriptedSteering([reply(first, second), reply(first)])
    summary, starts = run_plan(steering, approve=approve)
    assert seen == [["a", "b"], ["a"]]
    assert [[s["id"] for s in r] for r in summary["rounds"]] == [["b"]]
    assert summary["stopped"] == "no suggestion approved"
    roles = [d["braggmap_steering"]["role"] for d in starts]
    assert roles == ["coarse", "fine"] and starts[1]["braggmap_steering"]["id"] == "b"
    assert starts[1]["braggmap_steering"]["round"] == 1 and list(starts[1]["shape"]) == [2, 2]
    assert steering.requests[0]["strategies"] == ["crystal"] and steering.requests[0]["wait_for_series"] == []
    assert "limits_um" not in steering.requests[0]  # ophyd.sim axes have no soft limits


def test_the_motors_soft_limits_are_sent_with_every_request():
    from types import SimpleNamespace

    from stream.steering_plan import motor_limits_um

    motors = [SimpleNamespace(name="y", limits=(-1.0, 3.5)), SimpleNamespace(name="x", limits=(0, 0)),
              SimpleNamespace(name="z")]
    assert motor_limits_um(*motors) == {"y": [-1.0, 3.5]}
    steering = ScriptedSteering([reply()])
    run_plan(steering, limits_um={"motor2": [0.0, 2.0]})
    assert steering.requests[0]["limits_um"] == {"motor2": [0.0, 2.0]}


def test_plan_stops_on_nothing_new_on_budget_and_on_foreign_motors():
    repeat = suggestion(0, 1, 2, 0, 1, 2, "a")
    summary, _ = run_plan(ScriptedSteering([reply(repeat), reply(repeat)]))
    assert summary["stopped"] == "nothing new suggested" and len(summary["rounds"]) == 1
    summary, _ = run_plan(ScriptedSteering([reply(deferred=[repeat])]))
    assert summary["stopped"] == "what is left does not fit the time budget"
    steering = ScriptedSteering([reply(suggestion(0, 1, 2, 0, 1, 2, "a")), reply(suggestion(2, 3, 2, 0, 1, 2, "b"))])
    summary, _ = run_plan(steering, time_budget_s=1e-9)
    assert summary["stopped"] == "time budget of 1e-09 s spent"
    assert steering.requests[0]["time_budget_s"] == 1e-9
    foreign = suggestion(0, 1, 2, 0, 1, 2)
    foreign["motors"][0]["name"] = "theta"
    from analysis.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="moves theta and motor2"):
        run_plan(ScriptedSteering([reply(foreign)]))


def test_ask_on_terminal_reads_the_choice(monkeypatch, capsys):
    from stream.steering_plan import ask_on_terminal

    choices = [suggestion(0, 1, 2, 0, 1, 2, "a"), suggestion(2, 3, 2, 2, 3, 2, "b")]
    for answer, expected in (("y", ["a", "b"]), ("n", []), ("2", ["b"]), ("1, 2", ["a", "b"])):
        monkeypatch.setattr("builtins.input", lambda prompt, answer=answer: answer)
        assert [s["id"] for s in ask_on_terminal(choices)] == expected
    assert "motor1 0..1 (2) x motor2 0..1 (2)" in capsys.readouterr().out
    monkeypatch.setattr("builtins.input", lambda prompt: "maybe")
    from analysis.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="neither y, n nor a list"):
        ask_on_terminal(choices)
