"""The probe layers of a trained ChargE3Net rearranged for full-grid inference (no gradients).

:meth:`dftflow.ml.model.ChargE3Net.probe_density` is the definition; this
module evaluates the same function with less work per atom → probe edge,
which is where a full-grid prediction spends its time (tens of edges per
grid point, every grid point):

* **the atom side once per structure.** Each probe layer's sender features
  (the atoms' features after ``pre``) contracted with the Clebsch–Gordan
  coefficients do not depend on the probes: they are computed once, not per
  chunk;
* **only the harmonics a path uses.** Every output column of the ``uvu``
  tensor product comes from one path, and a path reads only the ``2 l₂ + 1``
  harmonics of its own degree ``l₂``. Columns are grouped in blocks of equal
  (output degree, ``l₂``), so each block is one dense product of the edges'
  ``l₂`` harmonics with the sender's matrix, instead of a product with all
  ``(lmax + 1)²`` harmonics and zeros (5× fewer multiplications at lmax 4);
  the blocks are evaluated one at a time, so the per-edge intermediate is one
  block wide;
* **one radial network for all layers.** The first layers of every probe
  layer's radial MLP are one matrix product; the activation's normalisation,
  the layer scalings and the ``1 / √num_neighbors`` of the neighbour sum are
  folded into the second layers' weights, whose columns are reordered so that
  each block reads its weights as a contiguous slice (no gather).

The rest of each layer (the angle, self-connection, ``post``, the gate and
the readout) acts per probe and is the model's own modules. The result
equals ``probe_density`` to float rounding (tested on real structures).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from e3nn import o3

from dftflow.ml.model import ChargE3Net, PointConvolution


@dataclass
class _Block:
    """Output columns of one (output degree ``d``, harmonic degree ``l2``): ``(2d + 1) × width``, k major."""

    d: int
    sh: slice  # the harmonics of degree l2 in the edge's spherical harmonics
    width: int  # the u's of all paths in the block
    paths: list[tuple[slice, int, int, int, torch.Tensor]]  # (in1 slice, mul, dim1, start in width, couplings)
    weight_cols: list[int]  # the tensor product's weight index of each u
    e3nn_cols: list[torch.Tensor]  # per path: (mul, 2d + 1) e3nn output columns


def _blocks(tp: o3.TensorProduct) -> list[_Block]:
    s1, s2, so = tp.irreps_in1.slices(), tp.irreps_in2.slices(), tp.irreps_out.slices()
    blocks: dict[tuple[int, int], _Block] = {}
    offset = 0
    for ins in tp.instructions:
        mul, ir1 = tp.irreps_in1[ins.i_in1]
        if ins.connection_mode != "uvu" or not ins.has_weight or tp.irreps_in2[ins.i_in2].mul != 1:
            raise ValueError("the probe kernel evaluates weighted uvu paths with single edge harmonics")
        ir2, ir3 = tp.irreps_in2[ins.i_in2].ir, tp.irreps_out[ins.i_out].ir
        block = blocks.setdefault((ir3.l, ins.i_in2), _Block(ir3.l, s2[ins.i_in2], 0, [], [], []))
        w3j = o3.wigner_3j(ir1.l, ir2.l, ir3.l, dtype=torch.float64) * ins.path_weight
        block.paths.append((s1[ins.i_in1], mul, ir1.dim, block.width, w3j))
        block.weight_cols.extend(range(offset, offset + mul))
        block.e3nn_cols.append(torch.arange(so[ins.i_out].start, so[ins.i_out].stop).reshape(mul, ir3.dim))
        block.width += mul
        offset += mul
    if offset != tp.weight_numel:
        raise ValueError("the probe kernel expects every weight of the tensor product to belong to one path")
    return [blocks[key] for key in sorted(blocks)]


class _LayerKernel:
    """One probe layer: sender matrices per block (once per structure) and the folded second radial layer."""

    def __init__(self, conv: PointConvolution, atoms: torch.Tensor, dtype: torch.dtype) -> None:
        tp = conv.tp
        self.conv = conv
        self.blocks = _blocks(tp)
        x = conv.pre(atoms).to(dtype)
        self.z = []  # per block: (nodes, (2d + 1) · width, 2 l2 + 1)
        for b in self.blocks:
            k = b.sh.stop - b.sh.start
            z = x.new_zeros(len(x), 2 * b.d + 1, b.width, k)
            for s1, mul, dim1, start, w3j in b.paths:
                z[:, :, start:start + mul] = torch.einsum("nui,ijk->nkuj", x[:, s1].reshape(-1, mul, dim1),
                                                          w3j.to(dtype))
            self.z.append(z.reshape(len(x), -1, k))
        order = torch.cat([torch.cat(b.e3nn_cols).T.reshape(-1) for b in self.blocks])
        if sorted(order.tolist()) != list(range(tp.irreps_out.dim)):
            raise ValueError("the probe kernel expects exactly one path per output irrep")
        self.inverse = torch.argsort(order)  # our column c holds e3nn's column order[c]
        cols = torch.as_tensor([c for b in self.blocks for c in b.weight_cols])
        self.wstart = [sum(b.width for b in self.blocks[:i]) for i in range(len(self.blocks))]
        hidden, last = conv.radial[0], conv.radial[1]
        if len(conv.radial) != 2 or last.act is not None:
            raise ValueError("the probe kernel expects radial networks with one hidden layer")
        act = hidden.act
        scale = (1.0 if act._is_id else act.cst) * hidden.var_out ** 0.5
        scale = scale / (last.h_in * last.var_in / last.var_out) ** 0.5 * conv.norm
        self.w2 = (last.weight.detach().double() * scale)[:, cols].to(dtype).contiguous()
        self.w1 = (hidden.weight.detach().double() / (hidden.h_in * hidden.var_in) ** 0.5).to(dtype)
        self.act = act.f

    def summed(self, hidden: torch.Tensor, sh: torch.Tensor, receiver: torch.Tensor, bounds: list[int],
               n_probes: int) -> torch.Tensor:
        """The normalised neighbour sum of the messages, (probes, irreps_out) in e3nn's layout;
        ``hidden``: (edges, radial_neurons), the radial network's hidden layer (normalisation folded into w2)."""
        weights = hidden @ self.w2
        n_edges = sh.shape[0]
        width = max(z.shape[1] for z in self.z)
        buffer = sh.new_empty(n_edges * width)
        sums = []
        nodes = [n for n in range(len(bounds) - 1) if bounds[n + 1] > bounds[n]]
        for b, z, w0 in zip(self.blocks, self.z, self.wstart):
            msg = buffer[:n_edges * z.shape[1]].view(n_edges, z.shape[1])
            y = sh[:, b.sh]
            for n in nodes:
                torch.mm(y[bounds[n]:bounds[n + 1]], z[n].T, out=msg[bounds[n]:bounds[n + 1]])
            msg.view(n_edges, 2 * b.d + 1, b.width).mul_(weights[:, None, w0:w0 + b.width])
            sums.append(msg.new_zeros(n_probes, z.shape[1]).index_add_(0, receiver, msg))
        return torch.cat(sums, dim=1).index_select(1, self.inverse)

    def __call__(self, p: torch.Tensor, summed: torch.Tensor) -> torch.Tensor:
        """The layer's output from the probes' input features and the neighbour sum (as PointConvolution)."""
        conv = self.conv
        theta = 0.1 * conv.angle(summed)
        cos, sin = torch.cos(theta), torch.sin(theta)
        sin = (1 - conv.has_self) + sin * conv.has_self
        return cos * conv.self_connection(p) + sin * conv.post(summed)


class ProbeKernel:
    """``model.probe_density`` for one structure whose atom features are known, many chunks of probes."""

    def __init__(self, model: ChargE3Net, atoms: list[torch.Tensor]) -> None:
        self.model = model
        dtype = atoms[0].dtype
        with torch.no_grad():
            self.layers = [_LayerKernel(conv, a, dtype) for conv, a in zip(model.probe_convs, atoms)]
        if len({layer.act for layer in self.layers}) != 1:
            raise ValueError("the probe kernel expects one activation in every radial network")
        self.act = self.layers[0].act
        self.w1 = torch.cat([layer.w1 for layer in self.layers], dim=1)
        self.hidden = [layer.w1.shape[1] for layer in self.layers]
        self.n_atoms = len(atoms[0])

    @torch.no_grad()
    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Density at the probes of ``batch`` (the keys of ``probe_density``)."""
        model = self.model
        order = torch.argsort(batch["probe_edge_sender"], stable=True)
        counts = torch.bincount(batch["probe_edge_sender"], minlength=self.n_atoms)
        bounds = [0, *torch.cumsum(counts, 0).tolist()]
        sender, receiver = batch["probe_edge_sender"][order], batch["probe_edge_receiver"][order]
        vec = model.edge_vectors(batch["positions"], batch["probe_positions"], batch["cell"], sender, receiver,
                                 batch["probe_edge_shift"][order], batch["probe_graph"][receiver])
        sh = o3.spherical_harmonics(model.irreps_sh, vec, normalize=True, normalization="component")
        r = vec.norm(dim=1)
        basis = model.basis(r)
        hidden = self.act(basis @ self.w1)  # the first layers of every radial network: one product
        n_probes = batch["probe_positions"].shape[0]
        p = batch["probe_positions"].new_zeros(n_probes, 1)
        start = 0
        for layer, gate, width in zip(self.layers, model.probe_gates, self.hidden):
            summed = layer.summed(hidden[:, start:start + width], sh, receiver, bounds, n_probes)
            p = gate(layer(p, summed))
            start += width
        out = model.readout(p)
        return out if model.config.spin else out[:, 0]
