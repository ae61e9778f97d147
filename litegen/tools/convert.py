"""`python -m litegen.tools.convert`: pretrained diffusers transformers (Wan 2.1, CogVideoX) <-> LiteGen.

    python -m litegen.tools.convert import DIFFUSERS_DIR OUT.safetensors
        Reads DIFFUSERS_DIR/config.json and its *.safetensors (sharded or not), writes our state dict
        to OUT and our model config beside it (OUT with suffix .yaml). Train from it with
        `model.init_from=OUT` and that model config (copy it to configs/model/).
    python -m litegen.tools.convert export SOURCE OUT_DIR --config CONFIG [--ema]
        SOURCE: a state-dict file (.safetensors / .pt) or a LiteGen checkpoint (runs/X/checkpoints/
        step-N); CONFIG: the .yaml written by `import`, or a run's config.yaml. Writes a diffusers
        folder (config.json + diffusion_pytorch_model.safetensors).

Needs the `hf` extra (safetensors); equivalence with diffusers is proven in tests/unit/test_convert.py.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Union

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from litegen.config import SCHEMAS, ConfigError
from litegen.config.validate import field_problems
from litegen.config.model import ModelConfig
from litegen.models import build_model
from litegen.tools.diffusers_maps import FAMILY_OF_CLASS, MAPS, rename

StateDict = dict[str, Tensor]
MODEL_SCHEMAS = {node().family: node for (group, _), node in SCHEMAS.items() if group == "model"}


def read_safetensors(path: Union[str, Path]) -> StateDict:
    from safetensors.torch import load_file  # hf extra, imported only when used

    path = Path(path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"no .safetensors files in {path}")
    state: StateDict = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


def from_diffusers(folder: Union[str, Path]) -> tuple[ModelConfig, StateDict]:
    """(our model config, our state dict) from a diffusers transformer folder."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    family = FAMILY_OF_CLASS.get(config.get("_class_name"))
    if family is None:
        raise ValueError(f"{folder}/config.json: _class_name={config.get('_class_name')!r}; "
                         f"convertible: {sorted(FAMILY_OF_CLASS)}")
    mapping = MAPS[family]
    cfg = mapping.config_from_diffusers(config)
    theirs = read_safetensors(folder)
    with torch.device("meta"):
        expected = build_model(cfg).state_dict()
    ours = {}
    for name, param in expected.items():
        key = rename(name, mapping.rules)
        if key not in theirs:
            raise KeyError(f"{folder}: no tensor {key!r} (for our {name!r})")
        ours[name] = mapping.tensor(cfg, name, theirs.pop(key), False)
        if ours[name].shape != param.shape:
            raise ValueError(f"{key}: shape {tuple(ours[name].shape)} does not fit our {name} "
                             f"{tuple(param.shape)}")
    if theirs:
        raise ValueError(f"{folder}: {len(theirs)} tensors have no place in our model, e.g. {sorted(theirs)[:3]}")
    return cfg, ours


def to_diffusers(cfg: ModelConfig, state: StateDict) -> tuple[dict, StateDict]:
    """(diffusers config.json dict, diffusers state dict) for our config and weights."""
    if cfg.family not in MAPS:
        raise ValueError(f"model.family={cfg.family!r} has no diffusers counterpart; convertible: {sorted(MAPS)}")
    mapping = MAPS[cfg.family]
    weights = {rename(n, mapping.rules): mapping.tensor(cfg, n, v, True).contiguous() for n, v in state.items()}
    return mapping.config_to_diffusers(cfg), weights


def save_model_config(cfg: ModelConfig, path: Path) -> None:
    path.write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def _model_schema(node, path) -> type:
    """The schema of a model node: its `family`, or the `<x>_schema` in a group file's defaults."""
    named = [d for d in node.get("defaults", []) if isinstance(d, str) and d.endswith("_schema")]
    if named:
        return SCHEMAS[("model", named[0])]
    family = node.get("family", "wan")
    if family not in MODEL_SCHEMAS:
        raise ValueError(f"{path}: unknown model family {family!r}; known: {sorted(MODEL_SCHEMAS)}")
    return MODEL_SCHEMAS[family]


def load_model_config(path: Union[str, Path]) -> ModelConfig:
    """A model config from a model yaml (ours or configs/model/*) or a run's config.yaml."""
    node = OmegaConf.load(path)
    node = node.model if "model" in node else node
    schema = _model_schema(node, path)
    node = OmegaConf.masked_copy(node, [k for k in node if k != "defaults"])
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))
    problems = [(f"model.{name}", msg) for name, msg in field_problems(cfg)]
    if problems:
        raise ConfigError(problems)
    return cfg


def checkpoint_weights(checkpoint: Path, ema: bool) -> StateDict:
    """Model (or EMA) weights from a LiteGen DCP checkpoint directory."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        flat = Path(tmp) / "checkpoint.pt"
        dcp_to_torch_save(checkpoint, flat)
        state = torch.load(flat, map_location="cpu", weights_only=False)
    if ema and "ema" not in state:
        raise KeyError(f"{checkpoint} holds no EMA weights (train.ema_decay was 0)")
    return state["ema"] if ema else state["train"]["model"]


def read_state(path: Union[str, Path], ema: bool = False) -> StateDict:
    path = Path(path)
    if path.is_dir() and (path / ".metadata").is_file():
        return checkpoint_weights(path, ema)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    return torch.load(path, map_location="cpu", weights_only=True)


@torch.no_grad()
def load_converted(net: nn.Module, path: Union[str, Path]) -> None:
    """Copy converted weights into `net` (strict: every parameter, nothing extra)."""
    state = read_state(path)
    params = net.state_dict()
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise ValueError(f"model.init_from={path}: {len(missing)} parameters missing (e.g. {missing[:3]}), "
                         f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}); does the model config match?")
    for name, value in state.items():
        if value.shape != params[name].shape:
            raise ValueError(f"model.init_from={path}: {name} is {tuple(value.shape)}, "
                             f"the model's is {tuple(params[name].shape)}")
        params[name].copy_(value)


def import_command(folder: Path, out: Path) -> None:
    from safetensors.torch import save_file

    cfg, state = from_diffusers(folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out))
    save_model_config(cfg, out.with_suffix(".yaml"))
    print(f"wrote {out} ({sum(v.numel() for v in state.values()):,} parameters, family {cfg.family}) "
          f"and {out.with_suffix('.yaml')}")


def export_command(source: Path, out_dir: Path, config: Path, ema: bool) -> None:
    from safetensors.torch import save_file

    cfg = load_model_config(config)
    diffusers_config, weights = to_diffusers(cfg, read_state(source, ema))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(diffusers_config, indent=2))
    save_file(weights, str(out_dir / "diffusion_pytorch_model.safetensors"))
    print(f"wrote {out_dir} ({diffusers_config['_class_name']})")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="diffusers folder -> LiteGen weights + model config")
    imp.add_argument("folder", type=Path)
    imp.add_argument("out", type=Path)
    exp = sub.add_parser("export", help="LiteGen weights or checkpoint -> diffusers folder")
    exp.add_argument("source", type=Path)
    exp.add_argument("out_dir", type=Path)
    exp.add_argument("--config", type=Path, required=True)
    exp.add_argument("--ema", action="store_true", help="export the EMA weights of a checkpoint")
    args = parser.parse_args(argv)
    try:
        if args.command == "import":
            import_command(args.folder, args.out)
        else:
            export_command(args.source, args.out_dir, args.config, args.ema)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
