"""FedUReID against Local-only BUC, the Baseline (FedAvg + BUC) and its ablations on the same generated edges.

Prints mAP / Rank-1 per edge and their mean, with the total images processed in local training (the compute
measure), and writes benchmarks/results/fedureid_table.json as {"<method>": {"mAP", "rank1",
"images_processed", "edges": {...}}}.

    python benchmarks/fedureid_table.py --quick        # 3 rounds, < 3 minutes
    python benchmarks/fedureid_table.py                # the configs' own rounds (10)
"""
import argparse
import sys
from pathlib import Path

from common import ROOT, machine, run_config, write_json

METHODS = ["fedureid_local", "fedureid_baseline", "fedureid", "fedureid_no_pe", "fedureid_no_pc", "fedureid_no_pu"]
LABELS = {"fedureid_local": "Local-only BUC", "fedureid_baseline": "Baseline (FedAvg+BUC)", "fedureid": "FedUReID",
          "fedureid_no_pe": "FedUReID w/o PE", "fedureid_no_pc": "FedUReID w/o PC", "fedureid_no_pu": "FedUReID w/o PU"}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "fedureid_table.json"))
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides applied to every run")
    return parser.parse_args()


def main():
    args = parse_args()
    rounds = args.rounds or (3 if args.quick else None)
    overrides = ["output.tensorboard=false", "output.save_model=false", "output.progress=false",
                 f"output.root={ROOT / 'runs' / 'fedureid_table'}", *args.overrides]
    if rounds:
        overrides += [f"server.rounds={rounds}", f"server.test_every={rounds}"]
    results = {}
    for method in args.methods:
        summary, _, per_round, wall = run_config(ROOT / "configs" / f"{method}_synthetic.yaml", overrides)
        final = summary["final"]
        edges = sorted(k.split("/", 1)[1] for k in final if k.startswith("mAP/"))
        results[method] = {"mAP": round(final["mAP"], 2), "rank1": round(final["rank1"], 2),
                           "rank5": round(final["rank5"], 2), "rank10": round(final["rank10"], 2),
                           "nmi": round(final.get("nmi", 0.0), 3), "images_processed": int(final["images_processed"]),
                           "seconds_per_round": round(per_round, 2), "rounds": summary["rounds"],
                           "edges": {e: {"mAP": round(final[f"mAP/{e}"], 2), "rank1": round(final[f"rank1/{e}"], 2)}
                                     for e in edges}}
        write_json(args.output, results)
        print(f"{LABELS[method]:<24} mAP {final['mAP']:6.2f}  Rank-1 {final['rank1']:6.2f}  "
              f"images {int(final['images_processed']):>8}  ({wall:.0f} s)", flush=True)
    write_json(Path(args.output).with_name("fedureid_table_meta.json"), {**machine(), "command": " ".join(sys.argv)})
    print(table(results))
    print(f"\nwritten: {args.output}")


def table(results):
    edges = sorted({e for r in results.values() for e in r["edges"]})
    head = f"{'method':<24}" + "".join(f"{e + ' R1/mAP':>18}" for e in edges) + f"{'mean R1/mAP':>18}{'images':>10}"
    lines = ["", head, "-" * len(head)]
    for method, r in results.items():
        cells = "".join(f"{r['edges'][e]['rank1']:>9.1f}/{r['edges'][e]['mAP']:<8.1f}" for e in edges)
        lines.append(f"{LABELS.get(method, method):<24}{cells}{r['rank1']:>9.1f}/{r['mAP']:<8.1f}{r['images_processed']:>10}")
    base, ours = results.get("fedureid_baseline"), results.get("fedureid")
    if base and ours:
        saved = 1 - ours["images_processed"] / base["images_processed"]
        lines.append(f"\nFedUReID vs Baseline: mAP {ours['mAP'] - base['mAP']:+.2f}, Rank-1 {ours['rank1'] - base['rank1']:+.2f}, "
                     f"{100 * saved:.0f}% fewer images processed")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
