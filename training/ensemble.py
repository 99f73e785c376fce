"""Average several trained CAC models into one ONNX model (the bundled v2 model is three seeds of one recipe).

    python -m training.ensemble --out models/cac-synthetic-v2 MEMBER_DIR [MEMBER_DIR ...]

Why: on the synthetic test splits, models of the same recipe and different training seeds differ most
in which bone near the heart they call coronary (0 to 33k Agatston on the same 12 independent
phantoms), not in how they score coronary lesions; averaging their probabilities keeps what they agree
on. All members are used, none chosen by its test score (docs/cac.md has the figures).

The result is one graph: the input feeds every member, and each output (heart, calcium) is the mean
of the members' probabilities, so the runtime, its manifest checks and the Agatston rule are
unchanged. The members must share input and outputs (checked). The bytes depend only on the members'
bytes, so rebuilding from the same members gives the same SHA-256.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from connector.infer.manifest import MANIFEST_NAME  # noqa: E402
from connector.store.digests import file_sha256  # noqa: E402
from training.provenance import portable_argv  # noqa: E402

SHARED_KEYS = ("schema", "name", "input", "outputs", "intended_use", "validated_for_clinical_use", "license")


class MemberMismatch(ValueError):
    """The member models cannot be averaged (different inputs, outputs or opsets)."""


def _member_manifest(folder: Path) -> dict:
    manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    if file_sha256(folder / manifest["file"]) != manifest["sha256"]:
        raise MemberMismatch(f"{folder}: model file does not match its manifest's sha256")
    return manifest


def build_ensemble(members: list[Path], out: Path, version: str) -> dict:
    """Write ``out/model.onnx`` (mean of the members' outputs) and its manifest; return the manifest."""
    import onnx
    from onnx import compose, helper

    if len(members) < 2:
        raise MemberMismatch("an ensemble needs at least two members")
    manifests = [_member_manifest(m) for m in members]
    for key in SHARED_KEYS:
        if any(m[key] != manifests[0][key] for m in manifests[1:]):
            raise MemberMismatch(f"members differ in manifest field {key!r}")
    graphs = [onnx.load(str(m / man["file"])) for m, man in zip(members, manifests)]
    if any(g.opset_import != graphs[0].opset_import for g in graphs[1:]):
        raise MemberMismatch("members use different ONNX opsets")

    first = graphs[0].graph
    source = first.input[0]
    nodes, initializers = [], []
    for i, graph in enumerate(graphs):
        prefixed = compose.add_prefix(graph, f"m{i}_")
        nodes.append(helper.make_node("Identity", [source.name], [f"m{i}_{source.name}"]))
        nodes.extend(prefixed.graph.node)
        initializers.extend(prefixed.graph.initializer)
    for output in first.output:
        nodes.append(helper.make_node("Mean", [f"m{i}_{output.name}" for i in range(len(graphs))], [output.name]))
    graph = helper.make_graph(nodes, "cac_ensemble", [source], list(first.output), initializers)
    model = helper.make_model(graph, opset_imports=list(graphs[0].opset_import), ir_version=graphs[0].ir_version,
                              producer_name="site-connector training.ensemble")
    onnx.checker.check_model(model)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.onnx").write_bytes(model.SerializeToString())

    base = manifests[0]
    manifest = {key: base[key] for key in ("schema", "name")}
    manifest.update({
        "version": version,
        "file": "model.onnx",
        "sha256": file_sha256(out / "model.onnx"),
        "description": f"Mean of {len(members)} 2.5D CAC segmentation networks (same recipe, different training "
                       "seeds): heart region, coronary vs non-coronary calcium, for CT attenuation-correction scans.",
    })
    manifest.update({key: base[key] for key in ("intended_use", "validated_for_clinical_use")})
    manifest["training_data"] = base.get("training_data", "synthetic phantoms only; no patient data")
    manifest.update({key: base[key] for key in ("license", "input", "outputs")})
    manifest["compute"] = {
        "macs_per_slice": sum(m["compute"]["macs_per_slice"] for m in manifests),
        "parameters": sum(m["compute"]["parameters"] for m in manifests),
    }
    manifest["training"] = {
        "script": "training/ensemble.py",
        "command": " ".join(["python", "-m", "training.ensemble"] + portable_argv(sys.argv[1:])),
        "combination": "mean of the members' heart and calcium probabilities",
        "members": [{"sha256": m["sha256"], "seed": m["training"]["seed"], "command": m["training"]["command"],
                     "torch": m["training"]["torch"]} for m in manifests],
        "date": dt.date.today().isoformat(),
    }
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.ensemble", description=__doc__.splitlines()[0])
    parser.add_argument("members", type=Path, nargs="+", help="member model folders (manifest.json + model)")
    parser.add_argument("--out", type=Path, required=True, help="folder to write model.onnx and manifest.json")
    parser.add_argument("--version", default="2.0.0")
    parser.add_argument("--eval", type=int, default=30, help="phantoms per generator split to evaluate (0: skip)")
    parser.add_argument("--eval-independent", type=int, default=12, help="independent phantoms to evaluate")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads for the evaluation")
    args = parser.parse_args(argv)
    try:
        manifest = build_ensemble(args.members, args.out, args.version)
    except MemberMismatch as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out / 'model.onnx'} ({(args.out / 'model.onnx').stat().st_size} bytes, "
          f"sha256 {manifest['sha256']})", flush=True)
    if args.eval or args.eval_independent:
        from connector.infer.runner import CacRunner
        from training.evaluate import evaluate_splits, print_splits

        report = evaluate_splits(CacRunner.load(args.out, threads=args.threads), args.eval, args.eval_independent)
        print_splits(report)
        manifest["evaluation"] = {"held_out_phantoms": args.eval, "independent_phantoms": args.eval_independent,
                                  "splits": report}
        (args.out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
