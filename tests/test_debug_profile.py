"""The sampling profiler and its exporters, on a real thread spinning in a known function."""

from __future__ import annotations

import json
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest

from liveswap.debug import ProfileBusyError
from liveswap.debug.flamegraph import SPEEDSCOPE_SCHEMA, collapsed_text
from liveswap.debug.profile import Profile, exclusive, is_running, take_profile, to_flamegraph_svg, to_speedscope

pytestmark = pytest.mark.timeout(30)

SPINNER = "spinner-abc"
OTHER_SPINNER = "other-spinner"  # the module-wide profile's spinner may still run beside this one
SVG = "{http://www.w3.org/2000/svg}"


def spin_known_function_abc(started: threading.Event, stop: threading.Event) -> None:
    started.set()
    while not stop.is_set():
        pass


@pytest.fixture
def spinner() -> Iterator[threading.Thread]:
    started, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=spin_known_function_abc, args=(started, stop), name=OTHER_SPINNER, daemon=True)
    thread.start()
    try:
        assert started.wait(10), "the spinning thread did not start"
        yield thread
    finally:
        stop.set()
        thread.join(10)


@pytest.fixture(scope="module")
def spin_profile() -> Iterator[Profile]:
    """One 1 s profile shared by the exporter tests (profiling is the slow part)."""
    started, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=spin_known_function_abc, args=(started, stop), name=SPINNER, daemon=True)
    thread.start()
    try:
        assert started.wait(10), "the spinning thread did not start"
        yield take_profile(1.0)
    finally:
        stop.set()
        thread.join(10)


def test_collapsed_stacks_are_root_first_and_show_the_spinning_function(spin_profile: Profile) -> None:
    spins = {s: n for s, n in spin_profile.collapsed.items() if s.startswith(SPINNER + ";")}
    assert spins, f"no samples of {SPINNER}: {list(spin_profile.collapsed)}"
    leaf = f"{__name__}:spin_known_function_abc"
    assert all(stack.split(";")[1] == "threading:Thread._bootstrap" for stack in spins)
    assert any(stack.endswith(";" + leaf) for stack in spins)
    # the spinner is sampled on (nearly) every tick: a sample per tick per thread, never more
    assert 0.5 * spin_profile.ticks <= sum(spins.values()) <= spin_profile.ticks
    assert spin_profile.locations[leaf] == (__file__, spin_known_function_abc.__code__.co_firstlineno)
    assert not spin_profile.cancelled and spin_profile.duration >= 0.9
    text = collapsed_text(spin_profile.collapsed)
    assert any(line.rsplit(" ", 1)[0].endswith(leaf) and int(line.rsplit(" ", 1)[1]) > 0 for line in text.splitlines())


def test_the_sampling_thread_is_left_out(spin_profile: Profile) -> None:
    me = threading.current_thread().name
    assert not any(stack.startswith(me + ";") for stack in spin_profile.collapsed)


def test_svg_flame_graph_shows_the_function_with_a_tooltip(spin_profile: Profile) -> None:
    svg = to_flamegraph_svg(spin_profile.collapsed, "spin <test> & co", locations=spin_profile.locations)
    root = ET.fromstring(svg)  # well-formed, title escaped
    assert root.tag == SVG + "svg"
    assert root.findtext(SVG + "title") == "spin <test> & co"
    frames = root.findall(SVG + "g")
    tips = [g.findtext(SVG + "title") or "" for g in frames]
    tip = next(t for t in tips if t.startswith(f"{__name__}:spin_known_function_abc\n"))
    first_line = spin_known_function_abc.__code__.co_firstlineno
    assert f"\n{__file__}:{first_line}\n" in tip
    assert "samples (" in tip and "%)" in tip
    # the frame is wide enough to carry its (possibly shortened) name as a label
    group = frames[tips.index(tip)]
    rect = group.find(SVG + "rect")
    assert rect is not None and float(rect.attrib["width"]) > 100
    label = group.findtext(SVG + "text") or ""
    assert label and (f"{__name__}:spin_known_function_abc".startswith(label.rstrip(".")))


def test_speedscope_document(spin_profile: Profile) -> None:
    doc = json.loads(
        json.dumps(
            to_speedscope(
                spin_profile.collapsed, "spin", locations=spin_profile.locations, interval=spin_profile.interval
            )
        )
    )
    assert doc["$schema"] == SPEEDSCOPE_SCHEMA
    frames = doc["shared"]["frames"]
    names = [f["name"] for f in frames]
    spin = frames[names.index(f"{__name__}:spin_known_function_abc")]
    assert spin["file"] == __file__ and spin["line"] == spin_known_function_abc.__code__.co_firstlineno
    threads = {p["name"]: p for p in doc["profiles"]}
    assert SPINNER in threads
    for profile in doc["profiles"]:
        assert profile["type"] == "sampled" and profile["unit"] == "milliseconds"
        assert len(profile["samples"]) == len(profile["weights"])
        assert all(0 <= i < len(frames) for stack in profile["samples"] for i in stack)
        assert profile["endValue"] == pytest.approx(sum(profile["weights"]))
    spin_stacks = threads[SPINNER]["samples"]
    assert any(frames[stack[-1]]["name"].endswith(":spin_known_function_abc") for stack in spin_stacks)


def test_excluded_threads_are_not_sampled(spinner: threading.Thread) -> None:
    assert spinner.ident is not None
    assert any(stack.startswith(OTHER_SPINNER + ";") for stack in take_profile(0.05).collapsed)
    prof = take_profile(0.1, exclude_threads=[spinner.ident])
    assert prof.ticks >= 1
    assert not any(stack.startswith(OTHER_SPINNER + ";") for stack in prof.collapsed)


def test_only_one_profile_at_a_time() -> None:
    assert not is_running()
    with exclusive():
        assert is_running()
        with pytest.raises(ProfileBusyError, match="already running") as info:
            take_profile(1.0)
        assert info.value.hint
    assert not is_running()


def test_cancel_ends_a_profile_early() -> None:
    cancel = threading.Event()
    cancel.set()
    prof = take_profile(30.0, cancel=cancel)
    assert prof.cancelled and prof.ticks == 1


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        take_profile(0)
    with pytest.raises(ValueError, match="positive"):
        take_profile(1.0, interval=0)


def test_svg_of_nothing_says_so() -> None:
    svg = to_flamegraph_svg({}, "empty")
    ET.fromstring(svg)
    assert "no samples were taken" in svg


def test_long_labels_are_shortened_but_tooltips_keep_them() -> None:
    long_name = "mod:" + "x" * 400
    svg = to_flamegraph_svg({f"t;{long_name}": 1, "t;short:f": 9}, "labels")
    root = ET.fromstring(svg)
    group = next(g for g in root.iter(SVG + "g") if (g.findtext(SVG + "title") or "").startswith(long_name))
    label = group.findtext(SVG + "text") or ""
    assert label.endswith("..") and len(label) < 40
    assert (group.findtext(SVG + "title") or "").startswith(long_name + "\n")
