"""Which nodes become INT8: selection by the module path the exporter recorded.

The dynamo exporter writes each node's module stack into its
``pkg.torch.onnx.name_scopes`` metadata (``[..., "model.dcal.0.t2v_attn.q_proj",
"linear_14"]``). A recipe is a set of regular expressions over that module
path, per graph role, applied to weight MatMuls only (second input an
initializer). Attention score and value products, norms, softmax, residual
adds, the tanh gates and the tied LM head (module path ``model``) are never
weight MatMuls of a matched module, so they stay in higher precision. The
selection must be computed on the exported graph itself: converting the
opset drops node metadata.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

import onnx

from ..export.graph_passes import NAME_SCOPES, innermost_module
from ..runtime.errors import UserError
from ..runtime.model.contract import LLM, POOLING, VISION_ENCODER

DECODER = r"^model\.language_model\.model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj$"
DCAL_LLM = r"^model\.dcal\.\d+\.((t2v|v2v)_attn|mlp)\.\w+_proj$"
# k and v read the same memory: export fuses them into one "k_v_proj" MatMul (graph_passes)
DCAL_MEMORY = r"^model\.dcal\.\d+\.(t2v|v2v)_attn\.(k|v|k_v)_proj$"  # in the pooling graph
PROJECTOR = r"^model\.projector\."
VISION = r"^model\.vision_model\."

# recipe name -> role -> patterns. The default is the LLM and its DCALs; the
# vision side (projector, encoder) is opt-in because it feeds every token.
RECIPES: dict[str, dict[str, tuple[str, ...]]] = {
    "default": {LLM: (DECODER, DCAL_LLM), POOLING: (DCAL_MEMORY,)},
    "llm-only": {LLM: (DECODER,)},
    "with-projector": {LLM: (DECODER, DCAL_LLM), POOLING: (DCAL_MEMORY, PROJECTOR)},
    "full": {
        LLM: (DECODER, DCAL_LLM),
        POOLING: (DCAL_MEMORY, PROJECTOR),
        VISION_ENCODER: (VISION,),
    },
}
DEFAULT_RECIPE = "default"
# A layer group (for the sensitivity sweep): the module path up to its block index.
GROUP = re.compile(
    r"^(model\.language_model\.model\.layers\.\d+|model\.dcal\.\d+|model\.projector"
    r"|model\.vision_model\.encoder\.layers\.\d+|model\.vision_model)"
)


@dataclass(frozen=True)
class WeightNode:
    """A weight MatMul of a graph and the module it came from."""

    role: str
    name: str
    module: str

    @property
    def group(self) -> str:
        match = GROUP.match(self.module)
        return f"{self.role}:{match.group(1) if match else self.module}"


def module_path(node: onnx.NodeProto) -> str:
    """The innermost module path of a node ('' when the exporter recorded none)."""
    for prop in node.metadata_props:
        if prop.key == NAME_SCOPES:
            return innermost_module(prop.value)
    return ""


def weight_nodes(model: onnx.ModelProto, role: str) -> list[WeightNode]:
    """Every MatMul whose second input is a stored weight, in graph order."""
    weights = {init.name for init in model.graph.initializer}
    return [
        WeightNode(role, node.name, module_path(node))
        for node in model.graph.node
        if node.op_type == "MatMul" and node.input[1] in weights
    ]


def check_recipe(name: str) -> dict[str, tuple[str, ...]]:
    """The recipe ``name``; an unknown one is a ``UserError`` listing the known ones."""
    if name not in RECIPES:
        raise UserError(f"--recipe {name!r}: unknown; known recipes: {', '.join(RECIPES)}")
    return RECIPES[name]


def select(
    nodes: list[WeightNode], recipe: str, exclude: list[str] = ()
) -> tuple[list[WeightNode], dict[str, list[str]]]:
    """Nodes the recipe quantizes minus those whose module matches an ``exclude`` glob.

    Returns (selected, excluded module paths by pattern). A pattern that
    matches no weight MatMul at all is a ``UserError`` (a typo would otherwise
    silently quantize everything).
    """
    patterns = check_recipe(recipe)
    chosen = [n for n in nodes if any(re.search(p, n.module) for p in patterns.get(n.role, ()))]
    dropped: dict[str, list[str]] = {}
    for pattern in exclude:
        hits = [n.module for n in nodes if fnmatch.fnmatchcase(n.module, pattern)]
        if not hits:
            raise UserError(f"--exclude {pattern!r} matches no weight MatMul's module path")
        dropped[pattern] = sorted(set(hits))
    kept = [n for n in chosen if not any(fnmatch.fnmatchcase(n.module, p) for p in exclude)]
    return kept, dropped
