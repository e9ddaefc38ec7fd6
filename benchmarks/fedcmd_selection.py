"""Which layer FedCMD's selection picks, how clearly, and what each rule would pick: FMNIST, every alpha and seed.

The selection phase is plain FedAvg whatever the rule, so one run per (alpha, seed, selection rounds) gives the
decision of every diagnostic rule exactly (`rules` in fedcmd_selection.json). Each cell runs the selection rounds
plus one decoupled round. Writes `benchmarks/results/fedcmd_selection.json`:
{"<selection rounds>/alpha=<a>/seed=<s>": {"decision", "margin", "rules": {rule: decision}, "tally_first_half",
"tally_second_half", "mean_scores", "tied_batch_share"}} and a `_meta.json` beside it.

    python benchmarks/fedcmd_selection.py                       # 10 and 20 selection rounds, alpha 0.1 0.5 1.0
    python benchmarks/fedcmd_selection.py --quick               # digits, 3 selection rounds, 2 seeds
"""
import argparse
import json
import sys
from pathlib import Path

from common import ROOT, write_json

from fedcmd_plugin import sweep


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--config", default=str(ROOT / "configs" / "fedcmd_fmnist.yaml"))
    parser.add_argument("--alphas", default="0.1,0.5,1.0")
    parser.add_argument("--selection-rounds", nargs="+", type=int, default=[10, 20])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--work", default=str(ROOT / "runs" / "fedcmd_selection"), help="sweep folders (resumable)")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "fedcmd_selection.json"))
    return parser.parse_args()


def halves(decision):
    """Tallies of the first and the second half of the selection rounds (does the vote drift while training?)."""
    names, rounds = list(decision["tally"]), decision["rounds"]
    cut = len(rounds) // 2
    return [{n: sum(r["tally"][n] for r in part) for n in names} for part in (rounds[:cut], rounds[cut:])]


def summarise(cell):
    folder = Path(cell["folder"])
    decision = json.loads((folder / "fedcmd_selection.json").read_text())
    first, second = halves(decision)
    return {"decision": decision["personal_block"], "margin": round(decision["vote_margin"]["margin"], 3),
            "rules": {name: rule["decision"] for name, rule in decision["rules"].items()},
            "rule_margins": {name: rule["margin"] for name, rule in decision["rules"].items()},
            "tally_first_half": first, "tally_second_half": second,
            "mean_scores": {b: round(s["mean"], 5) for b, s in decision["mean_scores"]["exact"].items()},
            "score_std": {b: round(s["std"], 5) for b, s in decision["mean_scores"]["exact"].items()},
            "tied_batch_share": decision.get("tied_batch_share")}


def main():
    args = parse_args()
    if args.quick:
        args.config, args.alphas, args.selection_rounds, args.seeds = (
            str(ROOT / "configs" / "fedcmd_digits.yaml"), "0.1", [3], [0, 1])
        args.work, args.output = args.work + "_quick", str(Path(args.output).with_name("fedcmd_selection_quick.json"))
    results, metas = {}, []
    for rounds in args.selection_rounds:
        items = [f"server.rounds={rounds + 1}", f"fedcmd.selection_rounds={rounds}", f"server.test_every={rounds + 1}",
                 "output.save_model=false", "output.tensorboard=false", f"data.alpha={args.alphas}"]
        cells = sweep.plan([("fedcmd", args.config, ())], args.seeds, items)
        work = Path(args.work) / f"selection{rounds}"
        meta = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), **sweep.machine()}
        _, failed = sweep.run_sweep(cells, work, args.workers, progress=sys.stderr.isatty(), meta=meta)
        if failed:
            sys.exit(f"error: {len(failed)} cells failed, e.g. {failed[0]['error']}")
        document = json.loads((work / "sweep.json").read_text())
        metas.append(document["meta"])
        for cell in document["cells"]:
            # "digits/alpha=0.5" where the alphas are a grid axis; a single alpha is no axis and names no setting
            setting = cell["setting"].split("/", 1)[1] if "/" in cell["setting"] else f"alpha={args.alphas}"
            results[f"{rounds}/{setting}/seed={cell['seed']}"] = summarise(cell)
    write_json(args.output, dict(sorted(results.items())))
    write_json(Path(args.output).with_name(Path(args.output).stem + "_meta.json"), metas)
    print(f"{'cell':<28} {'chosen':<10} {'margin':>6}  {'exact/last3':<11} {'mean/last3':<10} mean/last3/prefer")
    for name, r in sorted(results.items()):
        rules = r["rules"]
        preferred = next(v for k, v in rules.items() if k.startswith("mean/last3/prefer"))
        print(f"{name:<28} {r['decision']:<10} {r['margin']:>6.2f}  {rules['exact/last3/earliest']:<11} "
              f"{rules['mean/last3/earliest']:<10} {preferred}")
    print(f"written: {args.output}")


if __name__ == "__main__":
    main()
