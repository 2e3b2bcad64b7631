"""The grounded planner's eyes: one query per object, supervised object by object (`vision_stem="objects"`).

    uint8 [B, n_cam, 64, 64, 3] ─► GroupNorm convs 32-32-64-64 (strides 2-2-1-1), per camera
        ─► 16x16 map + (x, y) + a camera embedding: 256 keys a camera, both cameras together
        ─► one query per object name (object_names: 18 block names, with `scene_bowls` the 6 bowl
           colours, and the drawer), made from the name's words ("large" + "red" + "block"),
           cross-attends to the keys, then the queries attend to each other (a block on a block, two
           blocks of one colour)
           (with `readout_belief`, each block's and the drawer's query also carries what the read-out
           believed of it at the episode's previous plan: see Belief)
        ─► features [B, n_objects, vision_width]
        ─► heads: place (PLACES), where (a bowl or the block beneath), side (left/middle/right),
           x (for the left-to-right order), each bowl there or not, the drawer open or shut
        ─► tokens [B, n_objects, width] for the backbone

Why: a read-out fed only by the plan's text loss never learned to tell the colours apart (66% of
decisions, 4% on "which blocks are on the table"); the same queries given a loss per object on every
frame read 91% of objects after 30 minutes on this CPU (DESIGN.md, the third probe). The heads'
reading is also what writes the planner's scene line (`read_scenes`), so the line the backbone
decides from is the one the read-out was trained to get right.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from policies.augment import camera_input
from policies.grammar import COLORS, SIZES
from policies.pi05.configuration import BOWL_TOKENS, OBJECT_TOKENS, Pi05Config
from policies.pi05.vision import TRUNK_CHANNELS, TRUNK_STRIDES, QueryBlock, coordinate_grid, group_norm_convs
from policies.scene_line import PLACES, SIDES, Scene, SeenBlock, bowl_order, line_order, mentions_drawer, side_of

BLOCK_NAMES = tuple(f"{c} block" for c in COLORS) + tuple(f"{s} {c} block" for s in SIZES for c in COLORS)
DRAWER = "drawer"
assert len(BLOCK_NAMES) + 1 == OBJECT_TOKENS, "configuration.OBJECT_TOKENS counts the blocks and the drawer"
BOWL_NAMES = tuple(f"{c} bowl" for c in COLORS)
assert len(BOWL_NAMES) == BOWL_TOKENS, "configuration.BOWL_TOKENS counts BOWL_NAMES"
WHERE_NAMES = BOWL_NAMES + BLOCK_NAMES  # what a block can be in or on
NAME_WORDS = (*COLORS, *SIZES, "block", DRAWER)
X_SCALE = 0.3  # world x is regressed in units of this (the table spans about ±0.3 m)
IGNORE = -100


# A belief: what the read-out held of each block at the episode's previous plan, as indices into PLACES,
# WHERE_NAMES and SIDES, each with one index more meaning "not known / does not apply"; world x; the drawer
# shut (0), open (1) or not known (2); `stale` 1 where a read-out with `readout_memory` carried the block
# from an earlier plan (not read at the previous one; carry_belief). Tensors: place/where/side/stale long
# [B, n_blocks], x float [B, n_blocks], drawer long [B].
Belief = dict[str, Tensor]
UNKNOWN_PLACE, NO_WHERE, NO_SIDE, UNKNOWN_DRAWER = len(PLACES), len(WHERE_NAMES), len(SIDES), 2


def unknown_belief(batch: int, device: torch.device | str = "cpu") -> Belief:
    """Nothing believed yet: an episode's first plan."""
    n = len(BLOCK_NAMES)
    return {"place": torch.full((batch, n), UNKNOWN_PLACE, dtype=torch.long, device=device),
            "where": torch.full((batch, n), NO_WHERE, dtype=torch.long, device=device),
            "side": torch.full((batch, n), NO_SIDE, dtype=torch.long, device=device),
            "x": torch.zeros(batch, n, device=device),
            "drawer": torch.full((batch,), UNKNOWN_DRAWER, dtype=torch.long, device=device),
            "stale": torch.zeros(batch, n, dtype=torch.long, device=device)}


def belief_from_labels(labels: dict[str, Tensor]) -> Belief:
    """The simulator's labels of a frame (labels_from_facts, stacked) as a belief: what a read-out that
    read that frame right would carry to the next."""
    return {"place": labels["place"].clone(),
            "where": torch.where(labels["where"] == IGNORE, NO_WHERE, labels["where"]),
            "side": torch.where(labels["side"] == IGNORE, NO_SIDE, labels["side"]),
            "x": labels["x"].float().clone(), "drawer": labels["drawer"].clone(),
            "stale": torch.zeros_like(labels["place"])}


def belief_from_reading(out: dict[str, Tensor]) -> Belief:
    """A read-out's heads on a frame as the belief it carries to the episode's next plan (where and side
    only where its place has them, as labels_from_facts gives them)."""
    place = out["place"].argmax(-1)
    in_or_on = (place == PLACES.index("bowl")) | (place == PLACES.index("block"))
    return {"place": place, "where": torch.where(in_or_on, out["where"].argmax(-1), NO_WHERE),
            "side": torch.where(place == PLACES.index("table"), out["side"].argmax(-1), NO_SIDE),
            "x": torch.where(place > 0, out["x"].float() * X_SCALE, 0.0), "drawer": out["drawer"].argmax(-1),
            "stale": torch.zeros_like(place)}


def carry_belief(read: Belief, before: Belief) -> Belief:
    """What a read-out with `readout_memory` carries on: `read` (its reading now, belief_from_reading), with each
    block it read as absent but held present in `before` (the belief it read with) kept from `before`, marked
    stale. A block hidden for several plans in a row is still believed where it was last read; whether to trust
    that is the read-out's to learn (a hand rule that kept every block carried phantoms forward)."""
    held = (before["place"] != 0) & (before["place"] != UNKNOWN_PLACE)
    keep = (read["place"] == 0) & held
    carried = {k: torch.where(keep, before[k], v) for k, v in read.items() if k not in ("drawer", "stale")}
    return {**carried, "drawer": read["drawer"], "stale": keep.long()}


def select_belief(belief: Belief, rows) -> Belief:
    return {k: v[rows] for k, v in belief.items()}


def belief_where(rows: Tensor, chosen: Belief, otherwise: Belief) -> Belief:
    """`chosen`'s belief on the rows where `rows` (bool [B]) holds, `otherwise`'s on the rest."""
    return {k: torch.where(rows.view(-1, *[1] * (v.dim() - 1)), v, otherwise[k]) for k, v in chosen.items()}


def name_word_ids(name: str) -> list[int]:
    """The name's words in NAME_WORDS ("bowl" is not one: see ObjectReadout.bowl_word)."""
    return [NAME_WORDS.index(w) for w in name.split() if w != "bowl"]


def object_names(scene_bowls: bool) -> tuple[str, ...]:
    """The read-out's queries in order: the blocks, the bowls (with `scene_bowls`), the drawer last."""
    return BLOCK_NAMES + (BOWL_NAMES if scene_bowls else ()) + (DRAWER,)


class ObjectReadout(nn.Module):
    def __init__(self, cfg: Pi05Config):
        super().__init__()
        w = cfg.vision_width
        self.trunk = group_norm_convs(TRUNK_CHANNELS, TRUNK_STRIDES)
        self.map_proj = nn.Conv2d(TRUNK_CHANNELS[-1] + 2, w, 1)  # features + (x, y) -> the keys' width
        self.camera = nn.Parameter(torch.randn(len(cfg.cameras), w) * 0.02)
        self.map_norm = nn.LayerNorm(w)
        self.names = object_names(cfg.scene_bowls)
        self.reads_bowls = cfg.scene_bowls
        # A query is made from its name's words, so "large red block" shares what "red" and "large" learned.
        self.words = nn.Embedding(len(NAME_WORDS), w)
        words = torch.zeros(len(self.names), len(NAME_WORDS))
        for i, name in enumerate(self.names):
            words[i, name_word_ids(name)] = 1.0
        self.register_buffer("name_words", words, persistent=False)
        if self.reads_bowls:
            # "bowl" is a parameter of its own, not a row of `words`, so a read-out trained before bowls
            # were read keeps every tensor's shape and warm-starts one that reads them.
            is_bowl = torch.tensor([name in BOWL_NAMES for name in self.names], dtype=torch.float32)
            self.register_buffer("is_bowl", is_bowl[:, None], persistent=False)
            self.bowl_word = nn.Parameter(torch.randn(w) * 0.02)
            self.bowl_head = nn.Linear(w, 2)
        self.query_mlp = nn.Sequential(nn.Linear(w, w), nn.GELU(), nn.Linear(w, w))
        self.blocks = nn.ModuleList(
            QueryBlock(w, cfg.vision_heads, cfg.vision_mlp_dim, reads_map=i == 0) for i in range(cfg.vision_depth))
        self.norm = nn.LayerNorm(w)
        self.place_head = nn.Linear(w, len(PLACES))
        self.where_head = nn.Linear(w, len(WHERE_NAMES))
        self.side_head = nn.Linear(w, len(SIDES))
        self.x_head = nn.Linear(w, 1)
        self.drawer_head = nn.Linear(w, 2)
        self.proj = nn.Linear(w, cfg.width)  # the object tokens the backbone reads
        self.shift_pad = cfg.random_shift_pad
        self.reads_belief = cfg.readout_belief
        if self.reads_belief:
            self.belief_place = nn.Embedding(UNKNOWN_PLACE + 1, w)
            self.belief_where = nn.Embedding(NO_WHERE + 1, w)
            self.belief_side = nn.Embedding(NO_SIDE + 1, w)
            self.belief_x = nn.Linear(1, w)
            self.belief_drawer = nn.Embedding(UNKNOWN_DRAWER + 1, w)
            self.belief_mlp = nn.Sequential(nn.GELU(), nn.Linear(w, w))
            # a gate per channel from zero (ReZero): warm-started from a read-out without a belief, this one
            # reads exactly as that one until training opens it
            self.belief_gate = nn.Parameter(torch.zeros(w))
        self.remembers = cfg.readout_memory
        if self.remembers:  # carried (1) or read at the previous plan (0); zeros: reads as without memory
            self.belief_stale = nn.Embedding(2, w)
            nn.init.zeros_(self.belief_stale.weight)

    @property
    def n_tokens(self) -> int:
        return len(self.names)

    def belief_queries(self, belief: Belief) -> Tensor:
        """[B, n_objects, vision_width]: what each query adds for the belief (zeros for the bowls)."""
        blocks = (self.belief_place(belief["place"]) + self.belief_where(belief["where"])
                  + self.belief_side(belief["side"]) + self.belief_x((belief["x"] / X_SCALE)[..., None]))
        if self.remembers:
            blocks = blocks + self.belief_stale(belief["stale"])
        drawer = self.belief_drawer(belief["drawer"])[:, None]
        bowls = blocks.new_zeros(len(blocks), len(self.names) - len(BLOCK_NAMES) - 1, blocks.shape[-1])
        return self.belief_gate * self.belief_mlp(torch.cat([blocks, bowls, drawer], 1))

    def features(self, images: Tensor, belief: Belief | None = None) -> Tensor:
        """uint8 [B, n_cam, H, W, 3] -> [B, n_objects, vision_width] (normed). `belief`: what this read-out
        read at the episode's previous plan (belief_from_reading; None: nothing yet), for a read-out with
        `readout_belief` (one without ignores it)."""
        b, n_cam = images.shape[:2]
        x = camera_input(images.flatten(0, 1), self.camera.dtype, self.shift_pad, self.training)
        fmap = self.trunk(x)
        _, _, h, w = fmap.shape
        fmap = torch.cat([fmap, coordinate_grid(h, w, fmap.device, fmap.dtype).expand(len(fmap), -1, -1, -1)], 1)
        keys = self.map_proj(fmap).flatten(2).transpose(1, 2).reshape(b, n_cam, h * w, -1)
        keys = self.map_norm((keys + self.camera[None, :, None]).flatten(1, 2))  # [B, n_cam*h*w, w]
        names = self.name_words @ self.words.weight
        if self.reads_bowls:
            names = names + self.is_bowl * self.bowl_word
        queries = self.query_mlp(names)[None].expand(b, -1, -1)
        if self.reads_belief:
            belief = unknown_belief(b, images.device) if belief is None else belief
            queries = queries + self.belief_queries(belief).to(queries.dtype)
        for block in self.blocks:
            queries = block(queries, keys)
        return self.norm(queries)

    def tokens(self, features: Tensor) -> Tensor:
        return self.proj(features)

    def forward(self, images: Tensor) -> Tensor:
        return self.tokens(self.features(images))

    def belief_after(self, heads: dict[str, Tensor], belief: Belief | None) -> Belief:
        """The belief this read-out carries to the episode's next plan from its `heads` on a frame it read with
        `belief`: what it read, and (with `readout_memory`) what it still holds from before (carry_belief)."""
        read = belief_from_reading(heads)
        return carry_belief(read, belief) if self.remembers and belief is not None else read

    def heads(self, features: Tensor) -> dict[str, Tensor]:
        blocks = features[:, : len(BLOCK_NAMES)]
        out = {"place": self.place_head(blocks), "where": self.where_head(blocks), "side": self.side_head(blocks),
               "x": self.x_head(blocks).squeeze(-1), "drawer": self.drawer_head(features[:, -1])}
        if self.reads_bowls:
            out["bowls"] = self.bowl_head(features[:, len(BLOCK_NAMES): len(BLOCK_NAMES) + len(BOWL_NAMES)])
        return out

    def loss(self, features: Tensor, labels: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Cross-entropy per object on place / where / side / drawer, smooth L1 on x (present blocks)."""
        out = {k: v.float() for k, v in self.heads(features).items()}
        place = F.cross_entropy(out["place"].flatten(0, 1), labels["place"].flatten())
        where = _masked_ce(out["where"], labels["where"])
        side = _masked_ce(out["side"], labels["side"])
        present = labels["place"] > 0
        x = F.smooth_l1_loss(out["x"][present], labels["x"][present] / X_SCALE, beta=0.05) if present.any() \
            else out["x"].sum() * 0
        drawer = F.cross_entropy(out["drawer"], labels["drawer"])
        loss = place + where + side + x + 0.5 * drawer
        with torch.no_grad():
            acc = objects_right(out, labels)
        info = {"place_loss": place.item(), "where_loss": where.item(), "side_loss": side.item(),
                "x_loss": x.item(), "drawer_loss": drawer.item(), "object_acc": acc["objects"],
                "scene_acc": acc["scenes"]}
        if "bowls" in out:
            bowls = F.cross_entropy(out["bowls"].flatten(0, 1), labels["bowls"].flatten())
            loss = loss + 0.5 * bowls
            info.update(bowl_loss=bowls.item(), bowl_acc=(out["bowls"].argmax(-1) == labels["bowls"]).float().mean().item())
        return loss, info


def _masked_ce(logits: Tensor, labels: Tensor) -> Tensor:
    flat = labels.flatten()
    if not bool((flat != IGNORE).any()):
        return logits.sum() * 0
    return F.cross_entropy(logits.flatten(0, 1), flat, ignore_index=IGNORE)


def labels_from_facts(facts: dict) -> dict[str, list]:
    """The read-out's labels for one frame from the simulator's facts (agent/envs/scene_facts.py):
    per block name, its place class, where (IGNORE unless in a bowl / on a block), side (IGNORE unless
    on the table) and world x (0 when absent); per bowl name, there (1) or not (0); the drawer open (1)
    or shut (0)."""
    place, where, side, x = [], [], [], []
    for name in BLOCK_NAMES:
        fact = facts["blocks"].get(name)
        if fact is None:
            place.append(0), where.append(IGNORE), side.append(IGNORE), x.append(0.0)
            continue
        place.append(PLACES.index(fact["place"]))
        where.append(WHERE_NAMES.index(fact["where"]) if fact["place"] in ("bowl", "block") else IGNORE)
        side.append(SIDES.index(side_of(fact["x"])) if fact["place"] == "table" else IGNORE)
        x.append(float(fact["x"]))
    bowls = [int(name in facts.get("bowls", ())) for name in BOWL_NAMES]
    return {"place": place, "where": where, "side": side, "x": x, "bowls": bowls, "drawer": int(bool(facts["drawer_open"]))}


def objects_right(out: dict[str, Tensor], labels: dict[str, Tensor]) -> dict[str, float]:
    """Shares of present objects whose place (and where / side) is read right, and of frames whose every
    block (absent ones too) is read right. The left-to-right order is scored by scene_lines_right."""
    right = object_correct(out, labels)  # [B, n_blocks]
    present = labels["place"] > 0
    objects = (right & present).sum().item() / max(1, present.sum().item())
    scenes = right.all(1).float().mean().item()
    return {"objects": objects, "scenes": scenes}


def object_correct(out: dict[str, Tensor], labels: dict[str, Tensor]) -> Tensor:
    place_ok = out["place"].argmax(-1) == labels["place"]
    where_ok = (labels["where"] == IGNORE) | (out["where"].argmax(-1) == labels["where"])
    side_ok = (labels["side"] == IGNORE) | (out["side"].argmax(-1) == labels["side"])
    return place_ok & where_ok & side_ok


def read_scenes(out: dict[str, Tensor], tasks: list[str]) -> list[Scene]:
    """The heads' reading as Scenes: each block read as present, with its place, in line_order of its read x;
    the bowls read as there (a read-out without bowl queries reads none)."""
    places = out["place"].argmax(-1).tolist()
    bowls_there = out["bowls"].argmax(-1).tolist() if "bowls" in out else None
    sides, xs, drawers = out["side"].argmax(-1).tolist(), out["x"].float().tolist(), out["drawer"].argmax(-1).tolist()
    scenes = []
    for b, task in enumerate(tasks):
        seen = []
        for i, name in enumerate(BLOCK_NAMES):
            place = PLACES[places[b][i]]
            if place == "absent":
                continue
            where = _where_for(place, out["where"][b, i], name) if place in ("bowl", "block") else None
            seen.append((xs[b][i], SeenBlock(name, place, where, SIDES[sides[b][i]] if place == "table" else None)))
        by_name = {s.name: (x, s) for x, s in seen}
        seen = [by_name[name] for name in line_order({n: (x, s.place, s.where) for n, (x, s) in by_name.items()})]
        # a block read in a bowl says the bowl is there, whatever its own query read
        bowls = bowl_order([*(n for n, there in zip(BOWL_NAMES, bowls_there[b]) if there),
                            *(s.where for _, s in seen if s.place == "bowl")]) if bowls_there else ()
        scenes.append(Scene(tuple(s for _, s in seen), bool(drawers[b]) if mentions_drawer(task) else None, bowls))
    return scenes


def _where_for(place: str, logits: Tensor, name: str) -> str:
    """The most likely bowl (for "bowl") or other block (for "block"): the where head restricted to
    names of the right kind, so a block is never read as in a block or on itself."""
    allowed = [i for i, w in enumerate(WHERE_NAMES) if (w in BOWL_NAMES) == (place == "bowl") and w != name]
    best = max(allowed, key=lambda i: float(logits[i]))
    return WHERE_NAMES[best]
