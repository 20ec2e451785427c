"""The chaos soak, 40 s of it: 20 s of steady load, then 20 s with a SIGKILL every 5 s.

Runs ``benchmarks/chaos_soak.py``'s main on its own local Ray. Nothing may be lost, no completed
step may run again and every killed actor comes back. The throughput under chaos against the calm
one is printed, not asserted: it is a speed figure, for the benchmark's own runs (README), and on a
shared 2-core machine it moves with whatever else runs (50% at a load average of 7).
"""

from __future__ import annotations

from pathlib import Path

from benchmarks import chaos_soak


def test_chaos_loses_nothing_and_repeats_no_step(tmp_path: Path) -> None:
    result = chaos_soak.main(["--duration-s", "20", "--kill-every-s", "5", "--rate", "2",
                              "--drain-s", "120", "--json", str(tmp_path / "chaos_soak.json")])
    calm, chaos, kills = result["calm"], result["chaos"], result["kills"]
    seed = result["settings"]["args"]["seed"]
    print(f"seed {seed}: throughput calm {calm['throughput_per_s']:.2f}/s, chaos "
          f"{chaos['throughput_per_s']:.2f}/s, ratio {result['throughput_ratio']:.0%}; kills "
          f"{kills['by_kind']}")

    assert kills["total"] >= 3, kills  # one every 5 s from 5 s on; the last may fall at 20 s
    assert kills["not_back"] == 0 and not kills["kinds_down_at_end"], kills
    for window in (calm, chaos):
        assert window["submitted"] > 0 and window["refused"] == 0, window["refusals"]
        assert window["lost"] == 0, (seed, window["errors"])
        assert window["repeated"] == 0, seed
        assert window["over_runs"] == 0, seed
