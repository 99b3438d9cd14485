"""ChargE3Net (Koker et al., npj Comput. Mater. 10, 161, 2024), written for dftflow with e3nn.

The architecture follows the paper so that results compare:

* atoms start as one-hot species (even scalars); ``num_interactions`` layers
  of equivariant point convolutions — a tensor product of sender features
  with the spherical harmonics (l ≤ ``lmax``) of the edge direction, its
  weights from an MLP of a Gaussian radial basis of the edge length, summed
  over neighbours within ``cutoff`` and normalised by ``num_neighbors``,
  mixed with a self-connection — each followed by a gated nonlinearity;
  hidden features hold every l ≤ ``lmax`` with both parities;
* probe points (where the density is wanted) start as zeros and, at every
  layer, receive one-way messages from the atoms within the cutoff, through
  the same kind of convolution;
* a linear readout of the probe features gives the density (one even scalar,
  or two channels with ``spin``: total and magnetisation).

``lmax = 0`` gives the invariant variant (invChargE3Net). The default sizes
(``ml/charge3net.yaml``) are the paper's: 3 interactions, multiplicity 500,
lmax 4, cutoff 4 Å, 20 Gaussians.

Because the atoms' representation does not depend on the probes, it is
computed once per structure (:meth:`ChargE3Net.atom_features`) and any number
of probe chunks reuse it (:meth:`ChargE3Net.probe_density`).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from e3nn import o3
from e3nn.math import soft_one_hot_linspace
from e3nn.nn import FullyConnectedNet, Gate
from pydantic import Field
from torch import nn

from dftflow.config.base import StrictModel

NUM_SPECIES = 119  # one-hot over Z = 0..118


class ModelConfig(StrictModel):
    """The model's hyper-parameters (the ``model:`` section of ``ml/*.yaml``); defaults are the paper's."""

    num_interactions: int = Field(default=3, gt=0)
    num_neighbors: float = Field(default=20.0, gt=0, description="normalisation of the neighbour sums")
    mul: int = Field(default=500, gt=0, description="total multiplicity of the hidden irreps")
    lmax: int = Field(default=4, ge=0)
    cutoff: float = Field(default=4.0, gt=0, description="Å")
    num_basis: int = Field(default=20, gt=0, description="Gaussians of the radial basis")
    radial_neurons: int = Field(default=100, gt=0)
    spin: bool = False
    scalar_readout: bool = Field(
        default=True, description="the last probe layer computes only the even scalars the readout reads "
        "(the same function with less work); false in checkpoints written before it existed")
    occupancy: dict[str, list[int]] | None = Field(
        default=None, description="per atomic number: the projectors' l_j of its PAW setup; adds the occupancy head")
    occupancy_layout: Literal["gpaw", "vasp"] = Field(
        default="gpaw", description="what the occupancy head predicts: GPAW density matrices or VASP's "
                                    "augmentation occupancies (the CHGCAR blocks)")
    occupancy_reference: dict[str, list[float]] | None = Field(
        default=None, description="per atomic number: the free atom's occupancies as irreps of its layout "
        "(GPAW's atomic density matrix); the head then predicts the change from them. Filled in by training "
        "(occupancy_delta); absent in checkpoints written before it")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


def hidden_irreps(mul: int, lmax: int) -> o3.Irreps:
    """Both parities of every l ≤ lmax, each l with about mul / (lmax + 1) components in total."""
    return o3.Irreps([(max(1, round(mul / (lmax + 1) / (2 * degree + 1))), (degree, parity))
                      for degree in range(lmax + 1) for parity in (-1, 1)])


def _reachable(irreps_in: o3.Irreps, irreps_edge: o3.Irreps, ir: o3.Irrep) -> bool:
    return any(ir in ir1 * ir2 for _, ir1 in irreps_in for _, ir2 in irreps_edge)


class GaussianBasis(nn.Module):
    """Gaussians on [0, cutoff], standardised (zero mean, unit variance over the interval)."""

    def __init__(self, cutoff: float, number: int, samples: int = 4000) -> None:
        super().__init__()
        self.cutoff, self.number = cutoff, number
        with torch.no_grad():
            r = torch.linspace(0.0, cutoff, samples + 1)[1:]
            b = soft_one_hot_linspace(r, 0.0, cutoff, number, "gaussian", cutoff=False)
            std, mean = torch.std_mean(b, dim=0)
        self.register_buffer("mean", mean)
        self.register_buffer("inv_std", 1.0 / std)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        b = soft_one_hot_linspace(r, 0.0, self.cutoff, self.number, "gaussian", cutoff=False)
        return (b - self.mean) * self.inv_std


class SenderTensorProduct(nn.Module):
    """e3nn's ``uvu`` tensor product of sender features with edge harmonics, evaluated per sender.

    Message ``(u, k)`` of a path is ``w_u(edge) · pw · Σ_ij x_ui(sender) Y_j(edge) C_ijk``.
    The sum over ``i`` involves only the sender, so each node's features are
    first contracted with the Clebsch–Gordan coefficients into matrices ``Z``
    of shape (outputs, harmonics); the edges leaving a node (contiguous once
    sorted by sender) then need one dense product ``Y[edges] @ Z[node]ᵀ`` and a
    broadcast multiplication by their weights. Atom → probe graphs have few
    senders and many edges, so this replaces e3nn's per-edge outer products by
    a few matrix products. Outputs are grouped by their l (``k`` major, then
    every path's ``u``) so the weights broadcast without being expanded;
    :meth:`to_e3nn` restores e3nn's layout after the sum over receivers (far
    fewer rows than edges). It is the same function as the e3nn module, which
    stays the definition (tested against).
    """

    def __init__(self, tp: o3.TensorProduct) -> None:
        super().__init__()
        self.dim_in2, self.dim_out = tp.irreps_in2.dim, tp.irreps_out.dim
        s1, s2, so = tp.irreps_in1.slices(), tp.irreps_in2.slices(), tp.irreps_out.slices()
        self.w3j: list[torch.Tensor] = []  # float64, outside the buffers (cast at use)
        # per output degree: [(in1 slice, mul, dim1, in2 slice, position of its u's in the group, path)]
        groups: dict[int, list[tuple[slice, int, int, slice, int, int]]] = {}
        weight_cols: dict[int, list[int]] = {}
        e3nn_cols: dict[int, list[torch.Tensor]] = {}
        offset = 0
        for n, ins in enumerate(tp.instructions):
            if ins.connection_mode != "uvu" or not ins.has_weight or tp.irreps_in2[ins.i_in2].mul != 1:
                raise ValueError("SenderTensorProduct evaluates weighted uvu paths with single edge harmonics")
            mul, ir1 = tp.irreps_in1[ins.i_in1]
            ir2, ir3 = tp.irreps_in2[ins.i_in2].ir, tp.irreps_out[ins.i_out].ir
            self.w3j.append(o3.wigner_3j(ir1.l, ir2.l, ir3.l, dtype=torch.float64) * ins.path_weight)
            group = groups.setdefault(ir3.l, [])
            cols = weight_cols.setdefault(ir3.l, [])
            group.append((s1[ins.i_in1], mul, ir1.dim, s2[ins.i_in2], len(cols), n))
            cols.extend(range(offset, offset + mul))
            e3nn_cols.setdefault(ir3.l, []).append(torch.arange(so[ins.i_out].start, so[ins.i_out].stop)
                                                   .reshape(mul, ir3.dim))
            offset += mul
        self.degrees = sorted(groups)
        self.groups = [groups[d] for d in self.degrees]
        self.widths = [len(weight_cols[d]) for d in self.degrees]
        sizes = [(2 * d + 1) * w for d, w in zip(self.degrees, self.widths)]
        self.starts = [sum(sizes[:i]) for i in range(len(sizes))]
        for d in self.degrees:
            self.register_buffer(f"wcols_{d}", torch.as_tensor(weight_cols[d]), persistent=False)
        # our column c (degree-grouped, k major) holds e3nn's column order[c]
        order = torch.cat([torch.cat(e3nn_cols[d]).T.reshape(-1) for d in self.degrees])
        if sorted(order.tolist()) != list(range(self.dim_out)):
            raise ValueError("SenderTensorProduct expects exactly one path per output irrep")
        self.register_buffer("inverse", torch.argsort(order), persistent=False)

    def node_matrices(self, x: torch.Tensor) -> torch.Tensor:
        """(nodes, outputs, harmonics) in the grouped layout: each node's features contracted with the couplings."""
        z = x.new_zeros(x.shape[0], self.dim_out, self.dim_in2)
        for d, group, width, c0 in zip(self.degrees, self.groups, self.widths, self.starts):
            zd = z[:, c0:c0 + (2 * d + 1) * width].unflatten(1, (2 * d + 1, width))
            for s1, mul, d1, s2, start, n in group:
                part = torch.einsum("nui,ijk->nkuj", x[:, s1].reshape(-1, mul, d1), self.w3j[n].to(x))
                zd[:, :, start:start + mul, s2] = part
        return z

    def forward(self, x: torch.Tensor, counts: list[int], edge_sh: torch.Tensor,
                weights: torch.Tensor) -> torch.Tensor:
        """Messages (grouped layout) of edges sorted by sender; ``counts[n]`` edges leave node ``n``."""
        z = self.node_matrices(x)
        n_edges = edge_sh.shape[0]
        bounds = torch.tensor([0, *counts]).cumsum(0).tolist()
        nodes = [n for n, c in enumerate(counts) if c]
        if torch.is_grad_enabled() and any(t.requires_grad for t in (x, edge_sh, weights)):
            pre = torch.cat([edge_sh[bounds[n]:bounds[n + 1]] @ z[n].T for n in nodes]) if nodes \
                else edge_sh.new_zeros(0, self.dim_out)
            return torch.cat([pre[:, c0:c0 + (2 * d + 1) * w].unflatten(1, (2 * d + 1, w))
                              .mul(weights.index_select(1, getattr(self, f"wcols_{d}"))[:, None, :]).flatten(1)
                              for d, w, c0 in zip(self.degrees, self.widths, self.starts)], dim=1)
        # inference: products written in place, no concatenations
        pre = edge_sh.new_empty(n_edges, self.dim_out)
        for n in nodes:
            torch.mm(edge_sh[bounds[n]:bounds[n + 1]], z[n].T, out=pre[bounds[n]:bounds[n + 1]])
        for d, w, c0 in zip(self.degrees, self.widths, self.starts):
            pre[:, c0:c0 + (2 * d + 1) * w].unflatten(1, (2 * d + 1, w)).mul_(
                weights.index_select(1, getattr(self, f"wcols_{d}"))[:, None, :])
        return pre

    def to_e3nn(self, summed: torch.Tensor) -> torch.Tensor:
        """Columns of the grouped layout back in e3nn's order (after summing over receivers)."""
        return summed.index_select(1, self.inverse)


def sort_by_sender(sender: torch.Tensor, num_nodes: int) -> tuple[torch.Tensor, list[int]]:
    """The permutation that sorts edges by sender, and how many edges each node sends."""
    order = torch.argsort(sender, stable=True)
    return order, torch.bincount(sender, minlength=num_nodes).tolist()


class PointConvolution(nn.Module):
    """Equivariant convolution from sender nodes to receiver nodes (the same set, or probes).

    out = cos(θ) · selfconnection(receiver) + sin(θ) · conv, where conv sums
    tensor products of (linearly mixed) sender features with the edge's
    spherical harmonics, weighted by an MLP of the radial basis, and θ is a
    learned scalar of the convolved features (started small so that the
    self-connection dominates at initialisation).
    """

    def __init__(self, irreps_sender: o3.Irreps, irreps_receiver: o3.Irreps, irreps_edge: o3.Irreps,
                 irreps_out: o3.Irreps, radial: list[int], num_neighbors: float) -> None:
        super().__init__()
        self.irreps_sender, self.irreps_receiver = o3.Irreps(irreps_sender), o3.Irreps(irreps_receiver)
        self.irreps_out = o3.Irreps(irreps_out)
        self.norm = num_neighbors ** -0.5
        self.self_connection = o3.Linear(self.irreps_receiver, self.irreps_out)
        self.pre = o3.Linear(self.irreps_sender, self.irreps_sender)
        mid, paths = [], []
        for i, (mul, ir_in) in enumerate(self.irreps_sender):
            for j, (_, ir_edge) in enumerate(irreps_edge):
                for ir in ir_in * ir_edge:
                    if ir in self.irreps_out or ir == o3.Irrep("0e"):
                        paths.append((i, j, len(mid), "uvu", True))
                        mid.append((mul, ir))
        mid_irreps = o3.Irreps(mid)
        sorted_irreps, perm, _ = mid_irreps.sort()
        paths = [(i, j, perm[k], mode, train) for i, j, k, mode, train in paths]
        self.tp = o3.TensorProduct(self.irreps_sender, irreps_edge, sorted_irreps, paths,
                                   internal_weights=False, shared_weights=False)
        self.sender_tp = SenderTensorProduct(self.tp)
        self.radial = FullyConnectedNet(radial + [self.tp.weight_numel], torch.nn.functional.silu)
        self.post = o3.Linear(sorted_irreps, self.irreps_out)
        self.angle = o3.Linear(sorted_irreps, "0e")
        # components of the output that the self-connection cannot produce are taken from conv alone
        mask = torch.zeros(self.irreps_out.dim)
        for (_, ir), sl in zip(self.irreps_out, self.irreps_out.slices()):
            if ir in self.irreps_receiver:
                mask[sl] = 1.0
        self.register_buffer("has_self", mask)

    def forward(self, sender: torch.Tensor, receiver: torch.Tensor, edge_sender: torch.Tensor,
                edge_receiver: torch.Tensor, edge_sh: torch.Tensor, edge_basis: torch.Tensor,
                sender_counts: list[int] | None = None) -> torch.Tensor:
        """``sender_counts`` (edges per sender, edges sorted by sender) selects the per-sender evaluation."""
        weights = self.radial(edge_basis)
        if sender_counts is None:
            messages = self.tp(self.pre(sender)[edge_sender], edge_sh, weights)
        else:
            messages = self.sender_tp(self.pre(sender), sender_counts, edge_sh, weights)
        summed = messages.new_zeros(receiver.shape[0], messages.shape[1])
        summed.index_add_(0, edge_receiver, messages)
        if sender_counts is not None:
            summed = self.sender_tp.to_e3nn(summed)
        summed = summed * self.norm
        theta = 0.1 * self.angle(summed)
        cos, sin = torch.cos(theta), torch.sin(theta)
        sin = (1 - self.has_self) + sin * self.has_self
        return cos * self.self_connection(receiver) + sin * self.post(summed)


def _gate(irreps_in: o3.Irreps, irreps_edge: o3.Irreps, hidden: o3.Irreps) -> Gate:
    """A gated nonlinearity whose input irreps are reachable from ``irreps_in`` ⊗ edge harmonics."""
    scalars = o3.Irreps([(m, ir) for m, ir in hidden if ir.l == 0 and _reachable(irreps_in, irreps_edge, ir)])
    gated = o3.Irreps([(m, ir) for m, ir in hidden if ir.l > 0 and _reachable(irreps_in, irreps_edge, ir)])
    gate_ir = "0e" if _reachable(irreps_in, irreps_edge, o3.Irrep("0e")) else "0o"
    gates = o3.Irreps([(m, gate_ir) for m, _ in gated]).simplify()
    act = {1: torch.nn.functional.silu, -1: torch.tanh}
    act_gate = {1: torch.sigmoid, -1: torch.tanh}
    return Gate(scalars.simplify(), [act[ir.p] for _, ir in scalars.simplify()],
                gates, [act_gate[ir.p] for _, ir in gates], gated)


class OccupancyHead(nn.Module):
    """Per-atom PAW occupancies as irreps, from the atoms' features.

    ``kind``: ``gpaw`` for spin-summed GPAW density matrices
    (:class:`dftflow.ml.occupancy.OccupancyLayout`), ``vasp`` for the total
    augmentation occupancies of a CHGCAR
    (:class:`dftflow.ml.vasp_occupancy.VaspOccupancyLayout`). A linear path and
    a tensor product of the features with themselves (which reaches L up to
    twice the features' lmax) give the union of every species' irreps; each
    species then reads its own layout.
    """

    def __init__(self, irreps_in: o3.Irreps, layouts: dict[str, list[int]], mul: int = 8,
                 kind: str = "gpaw", reference: dict[str, list[float]] | None = None) -> None:
        super().__init__()
        from collections import Counter

        from dftflow.ml.occupancy import make_layout

        self.kind = kind
        self.layouts = {int(z): make_layout(kind, lj) for z, lj in layouts.items()}
        need: Counter = Counter()
        for layout in self.layouts.values():
            for key, n in Counter((ir.l, ir.p) for _, ir in layout.irreps).items():
                need[key] = max(need[key], n)
        self.irreps_out = o3.Irreps([(need[key], key) for key in sorted(need, key=lambda k: (k[0], -k[1]))])
        small = o3.Irreps([(mul, ir) for _, ir in irreps_in.simplify()])
        self.pre = o3.Linear(irreps_in, small)
        self.tp = o3.FullyConnectedTensorProduct(small, small, self.irreps_out)
        self.linear = o3.Linear(irreps_in, self.irreps_out)
        starts = {(ir.l, ir.p): sl.start for sl, (_, ir) in zip(self.irreps_out.slices(), self.irreps_out, strict=True)}
        for z, layout in self.layouts.items():
            seen: Counter = Counter()
            index = []
            for _, ir in layout.irreps:
                k = seen[(ir.l, ir.p)]
                seen[(ir.l, ir.p)] += 1
                begin = starts[(ir.l, ir.p)] + k * ir.dim
                index.extend(range(begin, begin + ir.dim))
            self.register_buffer(f"index_{z}", torch.as_tensor(index, dtype=torch.long), persistent=False)
        # the free atoms' occupancies, added per species (zeros without a reference): the learnt part is
        # the change on bonding, as Δ-SAED does for the grid; derived from the config, so not in state_dict
        table = torch.zeros(NUM_SPECIES, self.irreps_out.dim)
        for z, values in (reference or {}).items():
            index = self.index(int(z))
            if len(values) != len(index):
                raise ValueError(f"occupancy reference of Z={z}: {len(values)} values, its layout has {len(index)}")
            table[int(z), index] = torch.as_tensor(values, dtype=table.dtype)
        self.register_buffer("reference", table, persistent=False)
        if reference:  # start from the reference itself: the output layers begin at zero (their gradients do not)
            with torch.no_grad():
                self.linear.weight.zero_()
                self.tp.weight.zero_()

    def index(self, z: int) -> torch.Tensor:
        return getattr(self, f"index_{z}")

    def forward(self, features: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        """(n_atoms, irreps_out.dim): every atom's coefficients in the union layout."""
        x = self.pre(features)
        return self.reference[numbers.long()].to(features.dtype) + self.linear(features) + self.tp(x, x)

    def mask(self, numbers: torch.Tensor) -> torch.Tensor:
        """(n_atoms, irreps_out.dim) bool: the coefficients that belong to each atom's species."""
        out = torch.zeros(len(numbers), self.irreps_out.dim, dtype=torch.bool, device=numbers.device)
        for z in self.layouts:
            rows = (numbers == z).nonzero().flatten()
            if len(rows):
                out[rows[:, None], self.index(z).to(out.device)[None, :]] = True
        return out


class ChargE3Net(nn.Module):
    """Atoms → equivariant features; probes ← one-way messages; density at the probes (e/Å³)."""

    def __init__(self, config: ModelConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.config = config or ModelConfig(**kwargs)
        c = self.config
        self.irreps_sh = o3.Irreps.spherical_harmonics(c.lmax)
        self.basis = GaussianBasis(c.cutoff, c.num_basis)
        hidden = hidden_irreps(c.mul, c.lmax)
        radial = [c.num_basis, c.radial_neurons]
        self.atom_convs, self.atom_gates = nn.ModuleList(), nn.ModuleList()
        self.probe_convs, self.probe_gates = nn.ModuleList(), nn.ModuleList()
        atom_irreps = o3.Irreps(f"{NUM_SPECIES}x0e")
        probe_irreps = o3.Irreps("0e")
        for layer in range(c.num_interactions):
            gate = _gate(atom_irreps, self.irreps_sh, hidden)
            self.atom_convs.append(PointConvolution(atom_irreps, atom_irreps, self.irreps_sh, gate.irreps_in,
                                                    radial, c.num_neighbors))
            self.atom_gates.append(gate)
            new_atom_irreps = gate.irreps_out
            # probes listen to the atoms' features of this layer
            last = layer == c.num_interactions - 1 and c.scalar_readout
            # the readout is linear in the even scalars of the last probe layer: nothing else is computed there
            pgate = _gate(new_atom_irreps, self.irreps_sh, hidden.filter(["0e"]) if last else hidden)
            self.probe_convs.append(PointConvolution(new_atom_irreps, probe_irreps, self.irreps_sh,
                                                     pgate.irreps_in, radial, c.num_neighbors))
            self.probe_gates.append(pgate)
            atom_irreps, probe_irreps = new_atom_irreps, pgate.irreps_out
        self.readout = o3.Linear(probe_irreps, "0e + 0e" if c.spin else "0e")
        self.occupancy_head = (OccupancyHead(atom_irreps, c.occupancy, kind=c.occupancy_layout,
                                             reference=c.occupancy_reference) if c.occupancy else None)

    # -- geometry ---------------------------------------------------------------------------------
    @staticmethod
    def edge_vectors(sender_pos: torch.Tensor, receiver_pos: torch.Tensor, cell: torch.Tensor,
                     sender: torch.Tensor, receiver: torch.Tensor, shift: torch.Tensor,
                     edge_graph: torch.Tensor) -> torch.Tensor:
        """receiver − (sender + shift · cell), with each edge's own cell (``edge_graph`` indexes ``cell``)."""
        offset = torch.einsum("ei,eij->ej", shift.to(cell.dtype), cell[edge_graph])
        return receiver_pos[receiver] - (sender_pos[sender] + offset)

    def _edge_features(self, vec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sh = o3.spherical_harmonics(self.irreps_sh, vec, normalize=True, normalization="component")
        return sh, self.basis(vec.norm(dim=1))

    # -- forward ----------------------------------------------------------------------------------
    def atom_features(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Per-layer atom features; ``batch`` holds numbers, positions, cell, atom_graph and atom edges."""
        x = torch.nn.functional.one_hot(batch["numbers"].long(), NUM_SPECIES).to(batch["positions"].dtype)
        order, counts = sort_by_sender(batch["atom_edge_sender"], len(x))
        sender, receiver = batch["atom_edge_sender"][order], batch["atom_edge_receiver"][order]
        vec = self.edge_vectors(batch["positions"], batch["positions"], batch["cell"], sender, receiver,
                                batch["atom_edge_shift"][order], batch["atom_graph"][receiver])
        sh, basis = self._edge_features(vec)
        layers = []
        for conv, gate in zip(self.atom_convs, self.atom_gates):
            x = gate(conv(x, x, sender, receiver, sh, basis, counts))
            layers.append(x)
        return layers

    def probe_density(self, batch: dict[str, torch.Tensor], atoms: list[torch.Tensor]) -> torch.Tensor:
        """Density at the probes of ``batch`` (probe_positions, probe_graph, probe edges)."""
        order, counts = sort_by_sender(batch["probe_edge_sender"], len(atoms[0]))
        sender, receiver = batch["probe_edge_sender"][order], batch["probe_edge_receiver"][order]
        vec = self.edge_vectors(batch["positions"], batch["probe_positions"], batch["cell"], sender, receiver,
                                batch["probe_edge_shift"][order], batch["probe_graph"][receiver])
        sh, basis = self._edge_features(vec)
        p = batch["probe_positions"].new_zeros(batch["probe_positions"].shape[0], 1)
        for conv, gate, a in zip(self.probe_convs, self.probe_gates, atoms):
            p = gate(conv(a, p, sender, receiver, sh, basis, counts))
        out = self.readout(p)
        return out if self.config.spin else out[:, 0]

    def occupancies(self, atoms: list[torch.Tensor], numbers: torch.Tensor) -> torch.Tensor:
        """Occupancy irreps of every atom (union layout, see :class:`OccupancyHead`) from the last atom layer."""
        if self.occupancy_head is None:
            raise ValueError("this model has no occupancy head (model.occupancy is not set)")
        return self.occupancy_head(atoms[-1], numbers)

    def forward(self, batch: dict[str, torch.Tensor], with_occupancies: bool = False) -> Any:
        atoms = self.atom_features(batch)
        density = self.probe_density(batch, atoms)
        return (density, self.occupancies(atoms, batch["numbers"])) if with_occupancies else density


def build_model(settings: ModelConfig | dict[str, Any]) -> ChargE3Net:
    """A freshly initialised ChargE3Net of ``settings`` (a :class:`ModelConfig` or its fields)."""
    return ChargE3Net(settings if isinstance(settings, ModelConfig) else ModelConfig(**settings))
