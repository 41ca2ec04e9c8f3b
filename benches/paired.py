"""Paired A/B rounds for the bench scripts (benches/request_metrics.sh, benches/constrained.sh).

    paired.py record FILE ROUND ARM < bench.json   prints one run's line, appends it to FILE
    paired.py summary FILE BASE OTHER              OTHER over BASE, round by round

`record` reads one `sluice bench --json` result. `summary` pairs the two arms' runs of each
round and prints, for output tokens/s, TTFT p50 and ITL p50, each arm's mean and the ratio
OTHER/BASE: mean with a 95% confidence interval (Student's t), median, and the share of
rounds where OTHER's figure is the larger.
"""

import json
import statistics
import sys

FIELDS = [("out tok/s", "tok"), ("TTFT p50 ms", "ttft"), ("ITL p50 ms", "itl")]

# Student's t, two-sided 95%, by degrees of freedom (beyond 30: the normal value).
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23,
       11: 2.20, 12: 2.18, 13: 2.16, 14: 2.14, 15: 2.13, 16: 2.12, 17: 2.11, 18: 2.10, 19: 2.09,
       20: 2.09, 25: 2.06, 30: 2.04}


def record(path, rnd, arm):
    o = json.load(sys.stdin)
    c = o.get("cpu", {})
    run = {"round": int(rnd), "arm": arm, "tok": o["output_tokens_per_s"], "ttft": o["ttft_ms"]["p50"],
           "itl": o["itl_ms"]["p50"], "errors": o["errors"]}
    print(f"round {rnd:>3} {arm:>6}: {run['tok']:7.1f} out tok/s  TTFT p50 {run['ttft']:7.1f} ms  "
          f"ITL p50 {run['itl']:6.1f} ms  errors {run['errors']}  "
          f"CPU server {c.get('server_cores_used', 0):.2f} others {c.get('others_cores_used', 0):.2f}", flush=True)
    with open(path, "a") as f:
        f.write(json.dumps(run) + "\n")


def interval(ratios):
    """Half-width of the 95% confidence interval of the mean."""
    df = len(ratios) - 1
    if df < 1:
        return float("nan")
    t = T95[max(k for k in T95 if k <= df)] if df <= 30 else 1.96
    return t * statistics.stdev(ratios) / len(ratios) ** 0.5


def summary(path, base, other):
    rounds = {}
    for line in open(path):
        run = json.loads(line)
        rounds.setdefault(run["round"], {})[run["arm"]] = run
    pairs = [r for r in rounds.values() if base in r and other in r]
    if not pairs:
        sys.exit("no complete round")
    errors = sum(r[a]["errors"] for r in pairs for a in (base, other))
    print(f"{len(pairs)} rounds, {errors} failed requests; {other} over {base}:")
    for label, key in FIELDS:
        ratios = [r[other][key] / r[base][key] for r in pairs if r[base][key]]
        mean, half = statistics.mean(ratios), interval(ratios)
        larger = sum(x > 1 for x in ratios) / len(ratios)
        print(f"  {label:12} {base} {statistics.mean(r[base][key] for r in pairs):8.1f}  "
              f"{other} {statistics.mean(r[other][key] for r in pairs):8.1f}  "
              f"ratio {mean:.3f} (95% CI {mean - half:.3f}-{mean + half:.3f}), median {statistics.median(ratios):.3f}, "
              f"{other} larger in {larger:.0%} of rounds")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "record":
        record(*sys.argv[2:])
    elif len(sys.argv) == 5 and sys.argv[1] == "summary":
        summary(*sys.argv[2:])
    else:
        sys.exit(__doc__)
