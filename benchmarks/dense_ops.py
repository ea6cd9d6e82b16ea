"""``python -m benchmarks.dense_ops``: the dense ops of a training step, ours against PyTorch, op by op.

The ops are those a MEST training step keeps dense (:func:`mest.sparsity.default_profile` prunes the
residual stages' 3x3 convs only), read off the model (ResNet-32 by default) at batch 64 on 32x32
images: for the stem and each 1x1 shortcut conv its forward, grad-input (not the stem's: the images
need no gradient) and grad-weight; for the classifier its forward ``x @ W^T + b``, grad-input
``dy @ W`` and grad-weight ``dy^T @ x``; and the global average pool. The variants, each in
processes of its own, alternated round by round (:mod:`benchmarks.harness`):

- ``pytorch-nchw``: PyTorch's ops as autograd calls them (``conv2d``, ``aten.convolution_backward``
  with one output each, ``linear``, ``matmul``, ``adaptive_avg_pool2d``), torch imported first;
- ``pytorch-channels-last``: the same with every 4-d tensor in ``torch.channels_last``;
- ``ours``: each op as the Relax a training step has for it (``Gradient``'s ``conv2d_transpose`` and
  ``CNHW`` conv with its slice, ``matmul``), through the passes of
  :class:`~tvm_passes.schedule_dense_ops.ScheduleDenseOps`'s docstring (``FuseTransposeMatmul``,
  ``LegalizeDenseConv``, ``LegalizeOps``, ``FuseOps``/``FuseTIR``, ``ScheduleDenseOps``), called
  through the Relax VM.

Printed and written as JSON: per op its shapes, each variant's median (min-max over processes) and
``vs dense``, the faster PyTorch layout's median over ours (above 1: ours is faster); ours also
lists, per op, the PrimFuncs no schedule took (e.g. the classifier weight's ``transpose``).
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass

import torch

from benchmarks.harness import (
    CommandParser, Variant, VariantResult, Workload, add_protocol_arguments, at_least, format_ratio, host_target,
    markdown_table, ratio, run_benchmark, run_command,
)
from mest.models import MODEL_NAMES, build_model
from mest.sparsity import default_profile

# Only PyTorch and the pure-PyTorch parts of mest are imported at the top: PyTorch's workers import
# this module too. TVM is imported inside the setup of our variant.

DENSE_VARIANTS = ("pytorch-nchw", "pytorch-channels-last")


@dataclass(frozen=True)
class DenseOp:
    """One dense op of the step.

    Attributes
    ----------
    name : str
        ``"<module> <direction>"``, e.g. ``"layer2.0.shortcut.0 grad_input"``.
    kind : str
        ``conv``, ``linear`` or ``pool``.
    direction : str
        ``forward``, ``grad_input`` or ``grad_weight``.
    x_shape : tuple of int
        The op's input in the forward.
    w_shape : tuple of int
        Its weight (empty for the pool).
    y_shape : tuple of int
        Its output in the forward.
    stride, padding : int
        Of a conv (1 and 0 otherwise).
    """

    name: str
    kind: str
    direction: str
    x_shape: tuple[int, ...]
    w_shape: tuple[int, ...]
    y_shape: tuple[int, ...]
    stride: int = 1
    padding: int = 0


def dense_ops(model_name: str, batch: int, image_size: int) -> list[DenseOp]:
    """The dense ops of a training step of ``model_name`` (see the module docstring), in model order."""
    model = build_model(model_name, 10, 3)
    sparse = set(default_profile(model, 0.9))
    shapes: dict[str, tuple] = {}

    def record(name):
        def hook(module, inputs, output) -> None:  # returning a value would replace the output
            shapes[name] = (tuple(inputs[0].shape), tuple(output.shape))

        return hook

    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    hooks = [m.register_forward_hook(record(name)) for name, m in layers]
    with torch.no_grad():
        model(torch.zeros(batch, 3, image_size, image_size))
    for hook in hooks:
        hook.remove()
    dense = [(name, m) for name, m in layers if f"{name}.weight" not in sparse]
    last_conv = [name for name, m in layers if isinstance(m, torch.nn.Conv2d)][-1]
    ops = []
    for index, (name, module) in enumerate(dense):
        x_shape, y_shape = shapes[name]
        w_shape = tuple(module.weight.shape)
        if isinstance(module, torch.nn.Linear):
            pooled = (*x_shape, *shapes[last_conv][1][2:])  # what the global average pool reduces
            ops.append(DenseOp("pool forward", "pool", "forward", pooled, (), x_shape))
            ops += [DenseOp(f"{name} {d}", "linear", d, x_shape, w_shape, y_shape)
                    for d in ("forward", "grad_input", "grad_weight")]
            continue
        directions = ("forward", "grad_weight") if index == 0 else ("forward", "grad_input", "grad_weight")
        ops += [DenseOp(f"{name} {d}", "conv", d, x_shape, w_shape, y_shape, module.stride[0], module.padding[0])
                for d in directions]
    return ops


def _ops(params: dict) -> list[DenseOp]:
    return [DenseOp(**{k: tuple(v) if isinstance(v, list) else v for k, v in op.items()}) for op in params["ops"]]


def _tensor(shape: tuple[int, ...], seed: int, layout: torch.memory_format) -> torch.Tensor:
    tensor = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return tensor.contiguous(memory_format=layout) if len(shape) == 4 else tensor


# ---- the variants' setups (run in their workers) ----------------------------------------------

def pytorch_ops(params: dict) -> Workload:
    """PyTorch's ops in ``params["layout"]`` (``nchw`` or ``channels_last``)."""
    layout = torch.channels_last if params["layout"] == "channels_last" else torch.contiguous_format
    steps = {}
    for op in _ops(params):
        x, dy = _tensor(op.x_shape, 0, layout), _tensor(op.y_shape, 2, layout)
        if op.kind == "pool":
            steps[op.name] = lambda x=x: torch.nn.functional.adaptive_avg_pool2d(x, 1)
            continue
        w = _tensor(op.w_shape, 1, layout)
        if op.kind == "linear":
            bias = torch.zeros(op.w_shape[0])
            steps[op.name] = {"forward": lambda x=x, w=w, b=bias: torch.nn.functional.linear(x, w, b),
                              "grad_input": lambda dy=dy, w=w: dy @ w,
                              "grad_weight": lambda dy=dy, x=x: dy.t() @ x}[op.direction]
            continue
        if op.direction == "forward":
            steps[op.name] = lambda x=x, w=w, op=op: torch.nn.functional.conv2d(x, w, stride=op.stride,
                                                                                padding=op.padding)
        else:
            mask = [op.direction == "grad_input", op.direction == "grad_weight", False]
            steps[op.name] = lambda x=x, w=w, dy=dy, op=op, mask=mask: torch.ops.aten.convolution_backward(
                dy, x, w, None, [op.stride] * 2, [op.padding] * 2, [1, 1], False, [0, 0], 1, mask)
    return Workload(steps)


def _relax_op(op: DenseOp):
    """The op as a training step's Relax has it: ``main(*inputs)`` and the input shapes."""
    from tvm import relax  # noqa: PLC0415 - our variant's process only
    from tvm.script import relax as R  # noqa: PLC0415

    if op.kind == "pool":
        inputs, body = [op.x_shape], lambda x: relax.op.mean(x, axis=[2, 3])
    elif op.kind == "linear":
        inputs, body = {
            "forward": ([op.x_shape, op.w_shape, op.w_shape[:1]],
                        lambda x, w, b: relax.op.add(relax.op.matmul(x, relax.op.permute_dims(w)), b)),
            "grad_input": ([op.y_shape, op.w_shape], relax.op.matmul),
            "grad_weight": ([op.y_shape[::-1], op.x_shape], relax.op.matmul),  # dy^T, as permute_dims(dy) gives it
        }[op.direction]
    elif op.direction == "forward":
        inputs, body = [op.x_shape, op.w_shape], (
            lambda x, w: relax.op.nn.conv2d(x, w, strides=op.stride, padding=op.padding))
    elif op.direction == "grad_input":
        out_padding = op.x_shape[2] + 2 * op.padding - op.w_shape[2] - (op.y_shape[2] - 1) * op.stride
        inputs, body = [op.y_shape, op.w_shape], lambda dy, w: relax.op.nn.conv2d_transpose(
            dy, w, strides=op.stride, padding=op.padding, output_padding=out_padding, kernel_layout="IOHW")
    else:
        inputs = [op.x_shape, op.y_shape]

        def body(x, dy):  # as Gradient emits it: the CNHW conv, sliced to the kernel's taps
            conv = relax.op.nn.conv2d(x, dy, strides=1, padding=op.padding, dilation=op.stride, data_layout="CNHW",
                                      kernel_layout="IOHW", out_layout="CNHW")
            return relax.op.strided_slice(conv, [2, 3], [0, 0], list(op.w_shape[2:]))
    bb = relax.BlockBuilder()
    variables = [relax.Var(f"a{i}", R.Tensor(shape, "float32")) for i, shape in enumerate(inputs)]
    with bb.function("main", variables):
        with bb.dataflow():
            out = bb.emit_output(body(*variables))
        bb.emit_func_output(out)
    return bb.get(), inputs


def ours(params: dict) -> Workload:
    """Each op built by our passes for the target (before the timing) and called through the Relax VM."""
    import numpy as np  # noqa: PLC0415
    import tvm  # noqa: PLC0415 - our variant's process only
    from tvm import relax  # noqa: PLC0415

    from devices.targets import tvm_target  # noqa: PLC0415
    from tvm_passes.dense_schedule import is_scheduled  # noqa: PLC0415
    from tvm_passes.legalize_dense_conv import LegalizeDenseConv  # noqa: PLC0415
    from tvm_passes.schedule_dense_ops import ScheduleDenseOps  # noqa: PLC0415

    passes = tvm.transform.Sequential([
        relax.transform.FuseTransposeMatmul(), LegalizeDenseConv(), relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FuseOps(), relax.transform.FuseTIR(), ScheduleDenseOps(params["target"]),
    ])
    steps, unscheduled = {}, {}
    for op in _ops(params):
        mod, inputs = _relax_op(op)
        built = passes(mod)
        unscheduled[op.name] = sorted(gv.name_hint for gv, f in built.functions_items()
                                      if isinstance(f, tvm.tirx.PrimFunc) and not is_scheduled(f))
        vm = relax.VirtualMachine(tvm.compile(built, tvm_target(params["target"])), tvm.cpu())
        rng = np.random.default_rng(0)
        args = [tvm.runtime.tensor(rng.standard_normal(shape).astype(np.float32)) for shape in inputs]
        steps[op.name] = lambda vm=vm, args=args: vm["main"](*args)
    return Workload(steps, {"unscheduled_functions": unscheduled})


# ---- the command --------------------------------------------------------------------------------

def build_variants(ops: list[DenseOp], target: str) -> list[Variant]:
    """PyTorch in both layouts, then ours."""
    base = {"ops": [asdict(op) for op in ops]}
    return [Variant("pytorch-nchw", pytorch_ops, "torch", {**base, "layout": "nchw"}),
            Variant("pytorch-channels-last", pytorch_ops, "torch", {**base, "layout": "channels_last"}),
            Variant("ours", ours, "mest", {**base, "target": target})]


def records(results: list[VariantResult], ops: list[DenseOp]) -> list[dict]:
    """Per op: its shapes, each variant's summary and ``vs_dense`` (None where a variant failed)."""
    by_name = {r.variant.name: r for r in results}
    rows = []
    for op in ops:
        summaries = {name: by_name[name].summary(op.name) for name in (*DENSE_VARIANTS, "ours")}
        fastest = min((s for n, s in summaries.items() if n in DENSE_VARIANTS and s is not None),
                      key=lambda s: s.median_s, default=None)
        rows.append({**asdict(op), **{n: (vars(s) if s else None) for n, s in summaries.items()},
                     "vs_dense": ratio(fastest, summaries["ours"])})
    return rows


def _table(rows: list[dict]) -> str:
    def cell(summary: dict | None) -> str:
        if summary is None:
            return "failed"
        return f"{summary['median_s'] * 1e3:.3f} ({summary['min_s'] * 1e3:.3f}-{summary['max_s'] * 1e3:.3f})"

    header = ["op", "x / w / y shapes", *(f"{n} ms" for n in (*DENSE_VARIANTS, "ours")), "vs dense"]
    lines = [[r["name"], f"{list(r['x_shape'])} / {list(r['w_shape'])} / {list(r['y_shape'])}",
              *(cell(r[n]) for n in (*DENSE_VARIANTS, "ours")), format_ratio(r["vs_dense"])] for r in rows]
    return markdown_table(header, lines)


def build_parser() -> CommandParser:
    """The command's arguments."""
    parser = CommandParser(prog="python -m benchmarks.dense_ops", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet32", choices=list(MODEL_NAMES),
                        help="model whose dense ops are measured")
    parser.add_argument("--batch", type=at_least(1), default=64, help="images per call")
    parser.add_argument("--image-size", type=at_least(4), default=32, help="height and width of the images")
    parser.add_argument("--target", default="host", help="target of our ops; they run here, so this machine's")
    add_protocol_arguments(parser, out="runs/benchmarks/dense_ops.json", steps=15)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code."""
    args = build_parser().parse_args(argv)
    ops = dense_ops(args.model, args.batch, args.image_size)
    variants = build_variants(ops, host_target(args.target))

    def summarise(results: list[VariantResult]) -> tuple[dict, str]:
        rows = records(results, ops)
        return {"records": rows}, _table(rows)

    headline = f"{args.model}: {len(ops)} dense ops at batch {args.batch}, {args.image_size}x{args.image_size}"
    return run_benchmark("benchmarks.dense_ops", args, variants, headline, summarise)


if __name__ == "__main__":
    sys.exit(run_command(main))
