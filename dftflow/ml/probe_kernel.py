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
  each block reads its weights as a contiguous slice (no gather);
* **tabulated radial networks** (float32, up to :attr:`_Model.max_table_columns`
  weights per edge): the networks are a smooth function of the edge length
  alone, tabulated once per model in float64 and interpolated per edge
  (:class:`RadialTable`, within float32's rounding of the networks);
* **the pair route** (small models, where the products per edge are too small
  to run at speed): an atom reaches a probe through several periodic images,
  so the edges are first summed per (atom, probe) pair and harmonic
  (``embedding_bag``), and the sender matrices, ``post`` and the angle of each
  layer are one per-structure matrix: the neighbour sum and the linear maps
  after it become one dense product per layer and degree (:meth:`ProbeKernel._pair_outputs`).
  Large models, or chunks with many atoms per probe's neighbourhood, take the
  edge route (per-sender products edge by edge, as above).

The per-probe linear maps are dense matrices when small (e3nn's modules when
large); the gate and the readout are the model's own modules. The
model's side (tables, matrices) is built once per model and rebuilt when its
weights change. The result equals ``probe_density`` to float rounding (tested
on real structures).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from e3nn import o3
from e3nn.math import soft_one_hot_linspace

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


def _matrix(linear: torch.nn.Module) -> torch.Tensor:
    """An e3nn ``Linear`` (internal weights, no biases) as a float64 (in, out) matrix: ``linear(x) = x @ M``."""
    if linear.bias_numel or not linear.internal_weights or linear.weight.dim() != 1:
        raise ValueError("the probe kernel expects linear maps with internal weights and no biases")
    weight = linear.weight.detach().double()
    out = torch.zeros(linear.irreps_in.dim, linear.irreps_out.dim, dtype=torch.float64)
    s_in, s_out = linear.irreps_in.slices(), linear.irreps_out.slices()
    flat = 0
    for ins in linear.instructions:
        mul_in, ir_in = linear.irreps_in[ins.i_in]
        mul_out, _ = linear.irreps_out[ins.i_out]
        n = mul_in * mul_out
        w = weight[flat:flat + n].reshape(mul_in, mul_out) * ins.path_weight
        eye = torch.eye(ir_in.dim, dtype=torch.float64)  # (u, i) → (w, i): e3nn's mul-major layout
        out[s_in[ins.i_in], s_out[ins.i_out]] += torch.einsum("uw,ij->uiwj", w, eye).reshape(
            mul_in * ir_in.dim, mul_out * ir_in.dim)
        flat += n
    return out


class _Layer:
    """One probe layer, the model's side (no structure): its blocks, the folded radial network and the
    per-probe linear maps as matrices."""

    #: the largest [post | angle] matrix used as one dense product (larger ones: e3nn's per-irrep products)
    max_dense = 1 << 17

    def __init__(self, conv: PointConvolution, dtype: torch.dtype) -> None:
        tp = conv.tp
        self.blocks = _blocks(tp)
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
        self.w2_64 = (last.weight.detach().double() * scale)[:, cols].contiguous()
        self.w1_64 = hidden.weight.detach().double() / (hidden.h_in * hidden.var_in) ** 0.5
        self.w2, self.w1 = self.w2_64.to(dtype), self.w1_64.to(dtype)
        self.act = act.f
        self.pre = conv.pre
        # the per-probe linear maps as matrices (computed in float64): [post | angle] of the sum, self-connection;
        # large ones (mostly zeros between irreps) stay e3nn's modules on the edge route
        self.conv = conv
        self.post_angle_64 = torch.cat([_matrix(conv.post), _matrix(conv.angle) * 0.1], dim=1)
        self.post_angle = self.post_angle_64.to(dtype)
        self.self_matrix = _matrix(conv.self_connection).to(dtype)
        self.dense = self.post_angle.numel() <= self.max_dense
        self.has_self = conv.has_self.detach().to(dtype)
        self.no_self = 1 - self.has_self

    def sender_matrices(self, atoms: torch.Tensor) -> list[torch.Tensor]:
        """Per block: (nodes, (2d + 1), width, 2 l2 + 1), the atoms' features after ``pre`` with the couplings."""
        x = self.pre(atoms).to(self.w2.dtype)
        out = []
        for b in self.blocks:
            z = x.new_zeros(len(x), 2 * b.d + 1, b.width, b.sh.stop - b.sh.start)
            for s1, mul, dim1, start, w3j in b.paths:
                z[:, :, start:start + mul] = torch.einsum("nui,ijk->nkuj", x[:, s1].reshape(-1, mul, dim1),
                                                          w3j.to(x.dtype))
            out.append(z)
        return out

    def summed(self, z: list[torch.Tensor], weights: list[torch.Tensor], sh: torch.Tensor, receiver: torch.Tensor,
               bounds: list[int], n_probes: int) -> torch.Tensor:
        """The normalised neighbour sum of the messages edge by edge, (probes, irreps_out) in e3nn's layout;
        ``z``: :meth:`sender_matrices`; ``weights``: per block (edges, width), the radial network's output."""
        n_edges = sh.shape[0]
        width = max(zb[0].numel() // zb.shape[-1] for zb in z)
        buffer = sh.new_empty(n_edges * width)
        sums = []
        nodes = [n for n in range(len(bounds) - 1) if bounds[n + 1] > bounds[n]]
        for b, zb, w in zip(self.blocks, z, weights):
            zb = zb.reshape(zb.shape[0], -1, zb.shape[-1])
            msg = buffer[:n_edges * zb.shape[1]].view(n_edges, zb.shape[1])
            y = sh[:, b.sh]
            for n in nodes:
                torch.mm(y[bounds[n]:bounds[n + 1]], zb[n].T, out=msg[bounds[n]:bounds[n + 1]])
            msg.view(n_edges, 2 * b.d + 1, b.width).mul_(w[:, None, :])
            sums.append(msg.new_zeros(n_probes, zb.shape[1]).index_add_(0, receiver, msg))
        return torch.cat(sums, dim=1).index_select(1, self.inverse)

    def __call__(self, p: torch.Tensor, pa: torch.Tensor) -> torch.Tensor:
        """The layer's output (as PointConvolution) from the probes' input features ``p`` and ``pa``, the
        neighbour sum times :attr:`post_angle`: ``cos θ · self_connection(p) + sin θ · post(summed)``, sin θ
        replaced by 1 where there is no self part."""
        post, theta = pa[:, :-1], pa[:, -1:]
        sin = (torch.sin(theta) * self.has_self).add_(self.no_self)
        own = p @ self.self_matrix if self.dense else self.conv.self_connection(p)
        return torch.addcmul(sin * post, torch.cos(theta), own)

    def post_and_angle(self, summed: torch.Tensor) -> torch.Tensor:
        """``summed @ post_angle`` (the neighbour sum in e3nn's layout)."""
        if self.dense:
            return summed @ self.post_angle
        return torch.cat([self.conv.post(summed), 0.1 * self.conv.angle(summed)], dim=1)


class RadialTable:
    """Radial networks as one tabulated function of the edge length.

    The radial networks (Gaussian basis → hidden layer → weights) depend on
    the edge length alone, a smooth function on [0, cutoff]: it is evaluated
    once per model, in float64, at ``n + 3`` equally spaced lengths, and per
    edge by cubic (four-point Lagrange) interpolation, one ``embedding_bag``:
    four table rows and four multiply-adds per weight instead of the two
    products of the networks. The spacing is halved until the interpolation
    is within ``rtol`` of the networks (relative to the table's largest
    value) between the nodes, so it differs from the networks by less than
    float32's own rounding; :meth:`build` returns None when no table up to
    ``max_intervals`` is that close (the networks are then evaluated).
    """

    def __init__(self, table: torch.Tensor, cutoff: float, intervals: int) -> None:
        self.table, self.cutoff, self.intervals = table, cutoff, intervals
        self.inv_h = intervals / cutoff
        self.offsets = torch.arange(4)

    @classmethod
    def build(cls, radial, cutoff: float, dtype: torch.dtype, *, rtol: float = 2e-8,
              start: int = 1024, max_intervals: int = 1 << 14) -> RadialTable | None:
        """``radial``: float64 lengths (n,) → float64 weights (n, columns)."""
        n = start
        while n <= max_intervals:
            h = cutoff / n
            nodes = radial(torch.arange(-1, n + 2, dtype=torch.float64) * h)
            table = cls(nodes, cutoff, n)
            between = (torch.arange(n, dtype=torch.float64)[:, None] + torch.tensor([0.25, 0.5, 0.75])) * h
            error = (table(between.reshape(-1)) - radial(between.reshape(-1))).abs().max()
            if error <= rtol * nodes.abs().max():
                return cls(nodes.to(dtype), cutoff, n)
            n *= 2
        return None

    def columns(self, cols: torch.Tensor) -> RadialTable:
        """The table of some of the columns."""
        return RadialTable(self.table[:, cols].contiguous(), self.cutoff, self.intervals)

    def lookup(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The table rows (edges, 4) and interpolation weights (edges, 4) of the lengths ``r`` (in [0, cutoff]),
        the same for every table of this spacing."""
        x = r * self.inv_h
        i = x.floor().clamp_(0, self.intervals - 1)
        t = (x - i)[:, None]
        # Lagrange weights of the nodes i - 1, i, i + 1, i + 2 (table rows i .. i + 3)
        tm, t1, t2 = t + 1, t - 1, t - 2
        coef = torch.cat([t * t1 * t2 / -6, tm * t1 * t2 / 2, tm * t * t2 / -2, tm * t * t1 / 6], dim=1)
        return i.long()[:, None] + self.offsets, coef.to(self.table.dtype)

    def __call__(self, r: torch.Tensor, lookup: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """(edges, columns) at the lengths ``r``; ``lookup``: :meth:`lookup` of ``r`` when already known."""
        rows, coef = lookup if lookup is not None else self.lookup(r)
        return torch.nn.functional.embedding_bag(rows, self.table, per_sample_weights=coef, mode="sum")


class _Model:
    """What a :class:`ProbeKernel` needs of the model and no structure changes (built once per model)."""

    #: the radial networks are tabulated when they have at most this many weights (per edge, all layers)
    max_table_columns = 1024

    def __init__(self, model: ChargE3Net, dtype: torch.dtype) -> None:
        self.layers = [_Layer(conv, dtype) for conv in model.probe_convs]
        if len({layer.act for layer in self.layers}) != 1:
            raise ValueError("the probe kernel expects one activation in every radial network")
        self.act = self.layers[0].act
        self.w1 = torch.cat([layer.w1 for layer in self.layers], dim=1)
        self.hidden = [layer.w1.shape[1] for layer in self.layers]
        # per layer and l2 (the first harmonic of its degree): the weight columns of its blocks, in block order
        self.cols: list[dict[int, torch.Tensor]] = []
        self.places: list[list[tuple[int, int]]] = []  # per layer and block: (l2, its first column there)
        self.sh: dict[int, slice] = {}
        for layer in self.layers:
            cols: dict[int, list[int]] = {}
            places = []
            for b, w0 in zip(layer.blocks, layer.wstart):
                self.sh[b.sh.start] = b.sh
                places.append((b.sh.start, len(cols.setdefault(b.sh.start, []))))
                cols[b.sh.start].extend(range(w0, w0 + b.width))
            self.cols.append({g: torch.as_tensor(c) for g, c in sorted(cols.items())})
            self.places.append(places)
        # multiply-adds of the edge route's tensor products per edge
        self.edge_cost = sum((2 * b.d + 1) * b.width * (b.sh.stop - b.sh.start)
                             for layer in self.layers for b in layer.blocks)
        self.tables: list[dict[int, RadialTable]] | None = None
        columns = sum(layer.w2.shape[1] for layer in self.layers)
        # float64 keeps the networks (a table that close would be large), and so do wide networks
        if dtype == torch.float32 and columns <= self.max_table_columns:
            w1 = torch.cat([layer.w1_64 for layer in self.layers], dim=1)
            basis = model.basis
            mean, inv_std = basis.mean.double(), basis.inv_std.double()

            def radial(r: torch.Tensor) -> torch.Tensor:
                b = soft_one_hot_linspace(r, 0.0, basis.cutoff, basis.number, "gaussian", cutoff=False)
                hidden = self.act((b - mean) * inv_std @ w1).split(self.hidden, dim=1)
                return torch.cat([h @ layer.w2_64 for h, layer in zip(hidden, self.layers)], dim=1)

            table = RadialTable.build(radial, model.config.cutoff, dtype)
            if table is not None:
                offsets = [sum(layer.w2.shape[1] for layer in self.layers[:i]) for i in range(len(self.layers))]
                self.tables = [{g: table.columns(c + offset) for g, c in cols.items()}
                               for cols, offset in zip(self.cols, offsets)]

    def weights(self, model: ChargE3Net, r: torch.Tensor, pairs: bool) -> list[dict[int, torch.Tensor]]:
        """The radial weights at the edge lengths ``r``: per layer and l2, (edges, columns) for the pair route
        (``pairs``); per layer and block, (edges, width) for the edge route."""
        if self.tables is not None:
            lookup = self.tables[0][next(iter(self.tables[0]))].lookup(r)
            weights = [{g: table(r, lookup) for g, table in tables.items()} for tables in self.tables]
            if pairs:
                return weights
            return [[w[g][:, c0:c0 + b.width] for b, (g, c0) in zip(layer.blocks, places)]
                    for layer, w, places in zip(self.layers, weights, self.places)]
        hidden = self.act(model.basis(r) @ self.w1).split(self.hidden, dim=1)  # every first layer: one product
        full = [h @ layer.w2 for h, layer in zip(hidden, self.layers)]
        if pairs:
            return [{g: w[:, c] for g, c in cols.items()} for w, cols in zip(full, self.cols)]
        return [[w[:, w0:w0 + b.width] for b, w0 in zip(layer.blocks, layer.wstart)]
                for layer, w in zip(self.layers, full)]


_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _model_side(model: ChargE3Net, dtype: torch.dtype) -> _Model:
    """The model's :class:`_Model`, rebuilt when its parameters or buffers changed (in place or replaced)."""
    key = (dtype, tuple((t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers())))
    cached = _MODELS.get(model)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, _Model(model, dtype))
        _MODELS[model] = cached
    return cached[1]


class ProbeKernel:
    """``model.probe_density`` for one structure whose atom features are known, many chunks of probes."""

    #: a chunk takes the pair route when its estimated multiply-adds are at most this many times the edge
    #: route's (whose products are small and memory-bound, the pair route's one dense product per layer)
    pair_ratio = 16.0
    #: no pair route when its per-structure matrices would hold more numbers than this
    max_pair_matrix = 1 << 24
    #: atom → probe edges per chunk that suit the pair route (its intermediates are per pair, not per edge)
    pair_edges_per_chunk = 16_000

    def __init__(self, model: ChargE3Net, atoms: list[torch.Tensor]) -> None:
        self.model = model
        side = self.side = _model_side(model, atoms[0].dtype)
        self.n_atoms = n = len(atoms[0])
        with torch.no_grad():
            self.z = [layer.sender_matrices(a) for layer, a in zip(side.layers, atoms)]
        # the pair route's matrices: per layer and l2, (n · (2 l2 + 1) · columns, post and angle outputs)
        size = sum(n * (sh.stop - sh.start) * len(c) * layer.post_angle.shape[1]
                   for layer, cols in zip(side.layers, side.cols) for g, c in cols.items() for sh in [side.sh[g]])
        self.pair_cost = size  # multiply-adds per probe
        self.q: list[dict[int, torch.Tensor]] | None = None
        if size <= self.max_pair_matrix:
            with torch.no_grad():
                self.q = [self._pair_matrices(layer, z, cols) for layer, z, cols in zip(side.layers, self.z, side.cols)]

    @property
    def edges_per_chunk(self) -> int | None:
        """The chunk size (in edges) that suits this kernel, None for the caller's default."""
        return self.pair_edges_per_chunk if self.q is not None else None

    def _pair_matrices(self, layer: _Layer, z: list[torch.Tensor], cols: dict[int, torch.Tensor]
                       ) -> dict[int, torch.Tensor]:
        """``Q[(n, j, c), o] = Σ_k Z_n[k, u(c), j] · post_angle[e3nn(k, u(c)), o]`` per l2: the sender matrices
        and the linear maps after the neighbour sum in one matrix (in float64, then cast)."""
        m = layer.post_angle_64
        out: dict[int, list[torch.Tensor]] = {}
        for b, zb in zip(layer.blocks, z):
            mb = m[torch.cat(b.e3nn_cols)]  # (width, 2d + 1, outputs)
            out.setdefault(b.sh.start, []).append(torch.einsum("nkuj,uko->njuo", zb.double(), mb))
        return {g: torch.cat(out[g], dim=2).reshape(-1, m.shape[1]).to(z[0].dtype) for g in cols}

    @torch.no_grad()
    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Density at the probes of ``batch`` (the keys of ``probe_density``)."""
        model, side, n = self.model, self.side, self.n_atoms
        n_probes, n_edges = batch["probe_positions"].shape[0], len(batch["probe_edge_sender"])
        pairs = self.q is not None and self.pair_cost * n_probes <= self.pair_ratio * side.edge_cost * n_edges
        # edges sorted by (receiver, sender) for the pair route (runs of one pair), by sender for the edge route
        if pairs:
            key, order = torch.sort(batch["probe_edge_receiver"] * n + batch["probe_edge_sender"])
        else:
            order = torch.argsort(batch["probe_edge_sender"], stable=True)
        sender, receiver = batch["probe_edge_sender"][order], batch["probe_edge_receiver"][order]
        vec = model.edge_vectors(batch["positions"], batch["probe_positions"], batch["cell"], sender, receiver,
                                 batch["probe_edge_shift"][order], batch["probe_graph"][receiver])
        sh = o3.spherical_harmonics(model.irreps_sh, vec, normalize=True, normalization="component")
        weights = side.weights(model, vec.norm(dim=1), pairs)
        if pairs:
            pa = self._pair_outputs(weights, sh, key, n_probes)
        else:
            counts = torch.bincount(sender, minlength=n)
            bounds = [0, *torch.cumsum(counts, 0).tolist()]
            pa = [layer.post_and_angle(layer.summed(z, w, sh, receiver, bounds, n_probes))
                  for layer, z, w in zip(side.layers, self.z, weights)]
        p = batch["probe_positions"].new_zeros(n_probes, 1)
        for layer, gate, out in zip(side.layers, model.probe_gates, pa):
            p = gate(layer(p, out))
        out = model.readout(p)
        return out if model.config.spin else out[:, 0]

    def _pair_outputs(self, weights: list[dict[int, torch.Tensor]], sh: torch.Tensor, key: torch.Tensor,
                      n_probes: int) -> list[torch.Tensor]:
        """Every layer's ``post`` and angle of the neighbour sum through sums over the edges of each (atom,
        probe) pair: ``A[p, n, j, c] = Σ_{edges n → p} w_c Y_j`` (one ``embedding_bag`` per layer and l2, the
        edges in bags of one pair and harmonic), then ``A @ Q`` (:meth:`_pair_matrices`): the sender matrices
        meet the pairs, not the edges (an atom reaches a probe through several of its images)."""
        n_edges, n = len(key), self.n_atoms
        count = torch.bincount(key, minlength=n_probes * n)
        start = torch.cumsum(count, 0) - count
        edges = torch.arange(n_edges)
        local = edges - start[key]
        bags: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for g, sh_slice in self.side.sh.items():  # bag (pair q, harmonic j): its edges from J start_q + j count_q
            k = sh_slice.stop - sh_slice.start
            j = torch.arange(k)[:, None]
            position = (k * start[key] + local)[None, :] + j * count[key][None, :]
            index = torch.empty(k * n_edges, dtype=torch.long)
            index[position.reshape(-1)] = edges.repeat(k)
            per_sample = torch.empty(k * n_edges, dtype=sh.dtype)
            per_sample[position.reshape(-1)] = sh[:, sh_slice].T.reshape(-1)
            offsets = (k * start[:, None] + torch.arange(k)[None, :] * count[:, None]).reshape(-1)
            bags[g] = (index, offsets, per_sample)
        out = []
        for w, q in zip(weights, self.q):
            total = None
            for g, wg in w.items():
                index, offsets, per_sample = bags[g]
                a = torch.nn.functional.embedding_bag(index, wg.contiguous(), offsets, mode="sum",
                                                      per_sample_weights=per_sample).view(n_probes, -1)
                total = a @ q[g] if total is None else total.addmm_(a, q[g])
            out.append(total)
        return out
