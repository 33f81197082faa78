"""The token embedding in 8 or 4 bits, for ONNX Runtime (``GatherBlockQuantized``).

The embedding table is read one row per token, so its size costs disk and
memory, not decode time; at the Qwen2.5-0.5B shape it is 544 MB of the LLM's
2.05 GB. ONNX Runtime's ``com.microsoft::GatherBlockQuantized`` gathers rows of
a block-quantized table (blocks along the hidden axis) and dequantizes only
those rows. TensorRT does not parse contrib ops, so ``onnx-trt`` graphs keep
their fp16 table.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...export.graphs.graph_passes import CONTRIB
from ...runtime.errors import UserError
from ..recipes import module_path
from .block_quant import BlockScheme, integer_tensor, quantize_weight

UINT8_ZERO = 128  # 8-bit tables are stored as uint8 around 128 (the op's 8-bit form)


def _embedding_gathers(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    inits = {t.name for t in model.graph.initializer}
    return [
        node
        for node in model.graph.node
        if node.op_type == "Gather"
        and node.input[0] in inits
        and module_path(node).endswith("embed_tokens")
    ]


def quantize_embedding(model: onnx.ModelProto, scheme: BlockScheme) -> int:
    """Replace the token embedding's Gather by ``GatherBlockQuantized``; bytes saved."""
    nodes = _embedding_gathers(model)
    if not nodes:
        raise UserError("the LLM graph has no token-embedding Gather to quantize")
    inits = {t.name: t for t in model.graph.initializer}
    # Symmetric whatever the weights' blocks: both stored forms below (signed int4, and
    # uint8 around 128) assume a zero point of 0, so an asymmetric table would be misread.
    scheme = BlockScheme(scheme.bits, scheme.block_size, symmetric=True)
    saved = 0
    for node in nodes:
        table = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
        block = quantize_weight(table.T, scheme)  # blocks along the hidden axis
        values, scales = block.values.T, np.ascontiguousarray(block.scales.T)
        stem = f"{node.input[0]}_q{scheme.bits}"
        tensors = [numpy_helper.from_array(scales, f"{stem}_scale")]
        if scheme.bits == 4:
            tensors.insert(0, integer_tensor(stem, values, scheme))
        else:
            tensors.insert(0, numpy_helper.from_array((values + UINT8_ZERO).astype(np.uint8), stem))
            zero = np.full(scales.shape, UINT8_ZERO, np.uint8)
            tensors.append(numpy_helper.from_array(zero, f"{stem}_zero_point"))
        inputs = [tensors[0].name, node.input[1], tensors[1].name, *[t.name for t in tensors[2:]]]
        replacement = helper.make_node(
            "GatherBlockQuantized",
            inputs,
            list(node.output),
            name=f"{node.name}_q{scheme.bits}",
            domain=CONTRIB,
            gather_axis=0,
            quantize_axis=1,
            block_size=scheme.block_size,
            bits=scheme.bits,
        )
        node.CopyFrom(replacement)
        model.graph.initializer.extend(tensors)
        saved += table.nbytes - sum(len(t.raw_data) for t in tensors)
    used = {name for n in model.graph.node for name in n.input}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    if not any(o.domain == CONTRIB for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(CONTRIB, 1))
    return saved
