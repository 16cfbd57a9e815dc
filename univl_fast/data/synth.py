"""The built-in synthetic benchmark: WebQA's structure, drawn with Pillow (torch-free).

Entities with made-up names ("Varnok Bridge") each have 4-6 **image documents**: small PNG
pictures of 1-4 copies of one coloured shape, on one background with a fixed layout per count
(the picture is a function of shape, colour and count only). Within an entity the pictures have
distinct shapes and distinct colours; the caption names the entity only ("A view of the Varnok
Bridge."), and every shape / colour appears across many entities, so neither the caption nor
the pixels alone single a picture out; both together do.

Each entity also has two **decorations** (shape, colour, count) that only **text documents**
state ("The stars at the Varnok Bridge are painted green.", "The Varnok Bridge has three stars
carved on its walls."); their shapes and colours are never drawn in the entity's pictures. Text-
and image-answerable **visual questions share templates** ("What colour are the stars at the
Varnok Bridge?", "How many crosses does the Varnok Bridge show?", "Which shape is red at the
Varnok Bridge?") and never say picture / image / photo, so the wording does not give the answer
modality away: whether a picture or a text answers depends on the entity's documents. Text docs
also state non-visual facts ("The Varnok Bridge was built in 1873."), asked by about 20% of the
text-answerable dev / test queries. **Cross-modal distractors**: every entity has a banner text
naming one of its pictures' shapes in a colour it has nowhere else ("A banner with blue stars
hung on the Varnok Bridge in 1902.", answers nothing), and some captions share words with the
decoration statements ("The painted walls of the Varnok Bridge.").

``all_imgs_exp.json`` holds caption + " [SEP] " + a description of the picture ("three red
triangles", standing in for the paper's verbalized captions) and ``all_imgs_query.json``
caption + " [SEP] " + a question about the picture that reveals one attribute (the paper's
verbalized queries).

Output is deterministic (same scale and seed -> byte-identical files) and written into a
temporary sibling directory that is renamed into place at the end, so an interrupted run never
leaves a half-written dataset under the final name.
"""

from __future__ import annotations

import io
import json
import logging
import math
import multiprocessing as mp
import os
import random
import shutil
import sys
from base64 import b64encode
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path

from PIL import Image, ImageDraw

from univl_fast.utils.io import atomic_write_json, read_json, sha256_file

log = logging.getLogger(__name__)

SYNTH_VERSION = 2
CONFIG_FILE = "synth_config.json"
SEP = " [SEP] "

# -- vocabulary ------------------------------------------------------------------------------
SHAPES = (
    "circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "ring",
)  # fmt: skip
SHAPE_PLURAL = {s: ("crosses" if s == "cross" else s + "s") for s in SHAPES}
COLOURS = {  # well separated in RGB, all far from the neutral background
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 225),
    "yellow": (245, 205, 0),
    "purple": (140, 40, 185),
    "orange": (250, 125, 10),
    "black": (20, 20, 20),
    "pink": (255, 120, 200),
    "brown": (125, 75, 25),
    "cyan": (0, 200, 215),
}
COLOUR_NAMES = tuple(COLOURS)
COUNTS = (1, 2, 3, 4)
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
BACKGROUND = (235, 235, 235)  # one background: no per-image nuisance to memorise
ATTRS = ("shape", "colour", "count")
DECORATIONS_PER_ENTITY = 2  # visual facts stated only in text (see _World._make_images)
DECORATION_SHARE = 0.8  # of the text-answerable dev/test queries, how many ask a decoration

KINDS = {  # kind -> the size its "size" fact states
    "Bridge": "long",
    "Tower": "tall",
    "Temple": "tall",
    "Statue": "tall",
    "Garden": "long",
    "Ship": "long",
    "Fountain": "tall",
    "Gate": "tall",
    "Castle": "tall",
    "Lighthouse": "tall",
    "Market": "long",
    "Monastery": "tall",
}
ONSETS = (
    "v", "t", "m", "k", "s", "r", "l", "b", "d", "g", "n", "p", "f", "h", "z", "br", "tr",
    "gr", "st", "dr", "c", "th", "j", "w",
)  # fmt: skip
NUCLEI = ("a", "e", "i", "o", "u", "ai", "ei", "ou", "ar", "el", "an", "or")
CODAS = ("", "", "n", "k", "r", "s", "th", "l", "x", "nd")
MATERIALS = (
    "granite", "marble", "limestone", "sandstone", "brick", "oak", "iron", "bronze",
    "concrete", "basalt", "slate", "copper",
)  # fmt: skip
ORG_KINDS = ("Trust", "Heritage Society", "Foundation", "City Council", "Guild", "Company")

# captions name the entity only; some share words with the text docs' decoration statements
CAPTIONS = (
    "A photo of the {e}.",
    "The {e} on a clear day.",
    "A view of the {e}.",
    "Visitors at the {e}.",
    "The {e}, photographed in the afternoon.",
    "An old picture of the {e}.",
    "The {e} seen from a distance.",
    "{e}, a postcard view.",
    "The painted walls of the {e}.",
    "Carvings above the gate of the {e}.",
)

# non-visual facts: fact type -> (question templates, statement templates); {e} entity,
# {v} value, {dim} long|tall, {dimn} length|height
FACTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "built": (
        ("In which year was the {e} built?", "When was the {e} constructed?"),
        ("The {e} was built in {v}.", "Construction of the {e} was completed in {v}."),
    ),
    "designer": (
        ("Who designed the {e}?", "Which architect designed the {e}?"),
        ("The {e} was designed by {v}.", "{v} was the architect of the {e}."),
    ),
    "province": (
        ("In which province is the {e} located?", "Where is the {e}?"),
        ("The {e} is located in the province of {v}.", "The {e} stands in {v} province."),
    ),
    "size": (
        ("How {dim} is the {e}?", "What is the {dimn} of the {e} in metres?"),
        ("The {e} is {v} metres {dim}.", "The {e} measures {v} metres in {dimn}."),
    ),
    "material": (
        ("What is the {e} made of?", "Which material was used to build the {e}?"),
        ("The {e} is made of {v}.", "The {e} was built from {v}."),
    ),
    "visitors": (
        (
            "How many visitors does the {e} receive each year?",
            "How many people visit the {e} every year?",
        ),
        (
            "The {e} receives about {v} visitors each year.",
            "Around {v} people visit the {e} every year.",
        ),
    ),
    "owner": (
        ("Who owns the {e}?", "Which organisation owns the {e}?"),
        ("The {e} is owned by the {v}.", "The {v} owns the {e}."),
    ),
    "namesake": (
        ("Who was the {e} named after?", "After whom is the {e} named?"),
        ("The {e} was named after {v}.", "The {e} takes its name from {v}."),
    ),
}
FACT_TYPES = tuple(FACTS)

FILLERS = (
    "The {e} is popular with photographers.",
    "The {e} appears on a postage stamp issued in {year}.",
    "A festival is held near the {e} every summer.",
    "The {e} was restored in {year}.",
    "The {e} is open to the public on weekdays.",
    "Local legends tell of a treasure hidden near the {e}.",
    "The province of {p} is known for its {m} quarries.",
    "The province of {p} has {n} towns and villages.",
    "{person} wrote a book about the history of {p}.",
    "Guided tours of the {e} start every morning.",
)

# Visual questions, shared by image- and text-answerable queries: (condition attr, asked
# attr) -> templates; {e} entity, {shapes} plural shape, {colour}. None says picture / image /
# photo, so the wording does not tell which modality answers. An image answers when the
# entity's pictures show the condition; a text (a decoration statement) when the entity's
# decoration has it; never both (decoration shapes and colours never appear in the entity's
# pictures).
VISUAL_QUESTIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("shape", "colour"): (
        "What colour are the {shapes} at the {e}?",
        "Which colour are the {shapes} shown at the {e}?",
    ),
    ("shape", "count"): (
        "How many {shapes} does the {e} show?",
        "How many {shapes} are there at the {e}?",
    ),
    ("colour", "shape"): (
        "What shape is drawn in {colour} at the {e}?",
        "Which shape is {colour} at the {e}?",
    ),
}
IMAGE_QUESTIONS = VISUAL_QUESTIONS  # the name the v1 generator used
# decoration statements: "colour" doc (answers shape->colour and colour->shape), "count" doc
# (answers shape->count); {n} count phrase ("three stars"), {Shapes} capitalised plural
DECORATION_DOCS: dict[str, tuple[str, ...]] = {
    "colour": (
        "The {shapes} at the {e} are painted {colour}.",
        "{Colour} {shapes} are painted on the walls of the {e}.",
    ),
    "count": (
        "There {are} {n} carved above the gate of the {e}.",
        "The {e} has {n} carved on its walls.",
    ),
}
DECORATION_QUESTIONS = {"colour": (("shape", "colour"), ("colour", "shape")),
                        "count": (("shape", "count"),)}  # fmt: skip
# cross-modal distractor: names the entity and one of its pictures' shapes, in a colour that
# no document of the entity has, and answers nothing
# grounding questions (train split only): no entity, all three attributes; answered by every
# training picture that shows them. They stand in for the image-text pretraining the paper's
# CLIP starts from: with entity questions alone, in-batch negatives almost never share the
# positive's entity, the caption separates them, and a from-scratch image tower gets no signal.
GROUNDING_QUESTIONS = (
    "Where are {n} {colour} {shapes} shown?",
    "Which place shows {n} {colour} {shapes}?",
)
BANNERS = (
    "A banner with {colour} {shapes} hung on the {e} in {year}.",
    "In {year} a flag showing {colour} {shapes} was raised over the {e}.",
)


# -- scales ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScaleSpec:
    """Sizes of one scale. ``*_image`` = how many of that split's queries are image-answerable."""

    entities: int
    images: int
    texts: int
    train: int
    dev: int
    test: int
    train_image: int
    dev_image: int
    test_image: int
    train_grounding: int = 0  # of train_image: entity-free grounding questions (see below)


SCALES: dict[str, ScaleSpec] = {
    "tiny": ScaleSpec(28, 150, 250, 150, 40, 40, 75, 20, 20, 15),
    # ~2.5 entity questions per training image (shape->colour, shape->count, colour->shape)
    "small": ScaleSpec(300, 1500, 3000, 6000, 300, 500, 3600, 150, 250, 900),
    "medium": ScaleSpec(3000, 15000, 30000, 36000, 3000, 5000, 18000, 1500, 2500, 4000),
    # the paper's corpus (Table 5): 389,750 images, 787,697 texts; WebQA's query splits
    "paper": ScaleSpec(77950, 389750, 787697, 31766, 5000, 4966, 16400, 2554, 2511, 3000),
}


@dataclass
class SynthConfig:
    """How a synthetic dataset was made (saved as ``synth_config.json`` beside the files)."""

    scale: str = "small"  # tiny | small | medium | paper
    seed: int = 0  # same scale + seed -> byte-identical files
    image_size: int = 64  # pictures are image_size x image_size RGB PNGs
    version: int = SYNTH_VERSION  # bumped when the generator's output changes
    spec: dict = field(default_factory=dict)  # the ScaleSpec sizes


# -- names -----------------------------------------------------------------------------------
def _syllable(rng: random.Random) -> str:
    return rng.choice(ONSETS) + rng.choice(NUCLEI)


def _word(rng: random.Random, min_syl: int = 2, max_syl: int = 2) -> str:
    n = rng.randint(min_syl, max_syl)
    return ("".join(_syllable(rng) for _ in range(n)) + rng.choice(CODAS)).capitalize()


def _unique(rng: random.Random, n: int, make) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        s = make(rng)
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


# -- pictures --------------------------------------------------------------------------------
_LAYOUTS = {
    1: (((32, 32),), 20),
    2: (((16, 32), (48, 32)), 14),
    3: (((16, 18), (48, 18), (32, 47)), 13),
    4: (((16, 16), (48, 16), (16, 48), (48, 48)), 13),
}


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    cx: float,
    cy: float,
    r: float,
    fill: tuple[int, int, int],
) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=max(2, round(r * 0.4)))
    elif shape == "square":
        s = r * 0.85
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
    elif shape == "diamond":
        draw.polygon(
            [(cx, cy - r), (cx + r * 0.8, cy), (cx, cy + r), (cx - r * 0.8, cy)], fill=fill
        )
    elif shape == "cross":
        t = r * 0.36
        draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=fill)
        draw.rectangle((cx - t, cy - r, cx + t, cy + r), fill=fill)
    elif shape in ("star", "hexagon"):
        pts = []
        n, inner = (10, 0.45) if shape == "star" else (6, 1.0)
        for k in range(n):
            rad = r if k % 2 == 0 else r * inner
            ang = -math.pi / 2 + k * 2 * math.pi / n
            pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
        draw.polygon(pts, fill=fill)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(f"unknown shape {shape!r}")


def render_image(shape: str, colour: str, count: int, size: int = 64) -> bytes:
    """Draw ``count`` copies of a ``colour`` ``shape`` on the neutral background; PNG bytes.

    The picture is a function of (shape, colour, count) only: one background, a fixed layout
    per count, no jitter, so nothing but the three attributes varies between pictures (no
    per-image identity to memorise). Shapes are large (radius 13-20 px at 64 px) so a small
    ViT trained from scratch learns shape, colour and count quickly.
    """
    img = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    centres, radius = _LAYOUTS[count]
    scale = size / 64.0
    for cx, cy in centres:
        _draw_shape(draw, shape, cx * scale, cy * scale, radius * scale, COLOURS[colour])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _render_lines(chunk: list[tuple]) -> list[bytes]:
    """Worker: ``(image_id, shape, colour, count, size)`` -> imgs.tsv lines."""
    out = []
    cache: dict[tuple, bytes] = {}
    for image_id, shape, colour, count, size in chunk:
        key = (shape, colour, count, size)
        if key not in cache:
            cache[key] = b64encode(render_image(shape, colour, count, size))
        out.append(image_id.encode() + b"\t" + cache[key] + b"\n")
    return out


# -- the world -------------------------------------------------------------------------------
@dataclass
class _Image:
    image_id: str
    entity: int
    shape: str
    colour: str
    count: int
    caption: str
    exp: str
    vq: str

    def attr(self, name: str):
        return getattr(self, name)


@dataclass
class _Text:
    doc_id: str
    entity: int  # -1 for fillers not about an entity
    fact: str  # fact type, "decoration:colour|count", "banner", or "" for fillers
    text: str


def _n_shapes(count: int, shape: str) -> str:
    """'one star' / 'three stars'."""
    return f"{COUNT_WORDS[count]} {shape if count == 1 else SHAPE_PLURAL[shape]}"


def _describe(img: _Image) -> str:
    shape = img.shape if img.count == 1 else SHAPE_PLURAL[img.shape]
    n = ("an" if img.colour[0] in "aeiou" else "a") if img.count == 1 else COUNT_WORDS[img.count]
    return f"{n} {img.colour} {shape}"


def _verbal_question(rng: random.Random, shape: str, colour: str, count: int) -> str:
    k = rng.randrange(3)
    if k == 0:
        return f"how many {colour} shapes are there?"
    if k == 1:
        return f"what colour are the {SHAPE_PLURAL[shape]}?"
    return (
        "what is the single shape?" if count == 1 else f"what are the {COUNT_WORDS[count]} shapes?"
    )


def _fact_value(
    rng: random.Random, fact: str, people: list[str], provinces: list[str], orgs: list[str]
) -> str:
    if fact == "built":
        return str(rng.randint(1450, 1995))
    if fact in ("designer", "namesake"):
        return rng.choice(people)
    if fact == "province":
        return rng.choice(provinces)
    if fact == "size":
        return str(rng.randint(8, 950))
    if fact == "material":
        return rng.choice(MATERIALS)
    if fact == "visitors":
        return f"{rng.randint(2, 950)},000"
    if fact == "owner":
        return rng.choice(orgs)
    raise ValueError(fact)


def _say(progress: bool, msg: str) -> None:
    if progress:
        log.info("synth: %s", msg)


def _hex(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


def _visual_question(rng: random.Random, e: str, cond: str, asked: str, value) -> str:
    fmt = {"e": e}
    if cond == "shape":
        fmt["shapes"] = SHAPE_PLURAL[value]
    else:
        fmt["colour"] = value
    return rng.choice(VISUAL_QUESTIONS[(cond, asked)]).format(**fmt)


class _World:
    """Everything but the pixels, built in memory from one seeded RNG.

    Per entity: 4-6 pictures with distinct shapes and distinct colours (so "the stars at the
    X" or "the green shape at the X" is exactly one picture, while the caption alone leaves
    4-6 and the pixels alone hundreds of candidates); two *decorations* (shape, colour,
    count) stated only in text docs, whose shapes and colours are never drawn in the
    entity's pictures; 2-3 non-visual facts; one banner distractor text.
    """

    def __init__(self, spec: ScaleSpec, seed: int):
        if not 4 * spec.entities <= spec.images <= 6 * spec.entities:
            raise ValueError("images must be 4-6 per entity")
        self.spec = spec
        rng = random.Random(f"univl-fast-synth/{seed}")
        self.rng = rng
        n_e = spec.entities
        bases = _unique(rng, n_e, lambda r: f"{_word(r, 2, 2)} {r.choice(tuple(KINDS))}")
        self.entities = bases
        self.people = _unique(
            rng, max(60, n_e // 2), lambda r: f"{_word(r, 1, 2)} {_word(r, 2, 2)}"
        )
        self.provinces = _unique(rng, max(12, n_e // 25), lambda r: _word(r, 2, 3))
        self.orgs = _unique(
            rng, max(20, n_e // 10), lambda r: f"{_word(r, 2, 2)} {r.choice(ORG_KINDS)}"
        )
        self._make_images(rng)
        self._texts_made = False

    def make_texts(self) -> None:
        """Text docs (after the images, from the same RNG stream; separate so the pictures
        can start drawing in worker processes meanwhile)."""
        if not self._texts_made:
            self._make_texts(self.rng)
            self._texts_made = True

    # images: 4-6 per entity, distinct shapes and distinct colours within an entity
    def _make_images(self, rng: random.Random) -> None:
        spec = self.spec
        per = [4] * spec.entities
        extra = spec.images - 4 * spec.entities
        slots = [e for e in range(spec.entities) for _ in range(2)]
        rng.shuffle(slots)
        for e in slots[:extra]:
            per[e] += 1
        ids = rng.sample(range(10_000_000, 100_000_000), spec.images)
        self.images: list[_Image] = []
        self.entity_images: list[list[int]] = []
        self.decorations: list[list[tuple[str, str, int]]] = []
        nd = DECORATIONS_PER_ENTITY
        for e, n in enumerate(per):
            name = self.entities[e]
            shapes = rng.sample(SHAPES, n + nd)
            colours = rng.sample(COLOUR_NAMES, n + nd)
            self.decorations.append(
                [(shapes[n + i], colours[n + i], rng.choice(COUNTS)) for i in range(nd)]
            )
            rows = []
            for i in range(n):
                key = (shapes[i], colours[i], rng.choice(COUNTS))
                caption = rng.choice(CAPTIONS).format(e=name)
                img = _Image(str(ids[len(self.images)]), e, *key, caption, "", "")
                img.exp = caption + SEP + _describe(img)
                img.vq = caption + SEP + _verbal_question(rng, *key)
                rows.append(len(self.images))
                self.images.append(img)
            self.entity_images.append(rows)

    def _make_texts(self, rng: random.Random) -> None:
        spec = self.spec
        texts: list[_Text] = []
        self.fact_docs: dict[tuple[int, str], list[int]] = {}  # (entity, fact) -> rows
        self.deco_docs: dict[tuple[int, int, str], int] = {}  # (entity, deco, part) -> row
        self.entity_facts: list[dict[str, str]] = []
        budget = spec.texts
        para_p = 0.2
        for e, name in enumerate(self.entities):
            guid = _hex(rng)
            kinds = rng.sample(FACT_TYPES, rng.randint(2, 3))
            facts = {}
            dim = KINDS[name.rsplit(" ", 1)[1]]
            fmt = {"e": name, "dim": dim, "dimn": "length" if dim == "long" else "height"}
            for fact in kinds:
                value = _fact_value(rng, fact, self.people, self.provinces, self.orgs)
                facts[fact] = value
                statements = FACTS[fact][1]
                order = rng.sample(range(len(statements)), len(statements))
                n_docs = 2 if rng.random() < para_p else 1
                rows = []
                for k in order[:n_docs]:
                    rows.append(len(texts))
                    texts.append(_Text(guid, e, fact, statements[k].format(v=value, **fmt)))
                self.fact_docs[(e, fact)] = rows
            self.entity_facts.append(facts)
            for d, (shape, colour, count) in enumerate(self.decorations[e]):
                for part in ("colour", "count"):
                    t = rng.choice(DECORATION_DOCS[part]).format(
                        e=name,
                        shapes=SHAPE_PLURAL[shape],
                        Shapes=SHAPE_PLURAL[shape].capitalize(),
                        colour=colour,
                        Colour=colour.capitalize(),
                        n=_n_shapes(count, shape),
                        are="is" if count == 1 else "are",
                    )
                    self.deco_docs[(e, d, part)] = len(texts)
                    texts.append(_Text(guid, e, f"decoration:{part}", t))
            used = {self.images[r].colour for r in self.entity_images[e]}
            used |= {c for _, c, _ in self.decorations[e]}
            img = self.images[rng.choice(self.entity_images[e])]
            texts.append(
                _Text(
                    guid,
                    e,
                    "banner",
                    rng.choice(BANNERS).format(
                        e=name,
                        colour=rng.choice([c for c in COLOUR_NAMES if c not in used]),
                        shapes=SHAPE_PLURAL[img.shape],
                        year=rng.randint(1700, 2020),
                    ),
                )
            )
        if len(texts) > budget:
            raise ValueError(f"scale needs {len(texts)} entity documents but only {budget} texts")
        guid, n_in_guid = _hex(rng), 0
        while len(texts) < budget:
            if n_in_guid == 10:
                guid, n_in_guid = _hex(rng), 0
            e = rng.randrange(spec.entities)
            template = rng.choice(FILLERS)
            t = template.format(
                e=self.entities[e],
                year=rng.randint(1700, 2020),
                p=rng.choice(self.provinces),
                m=rng.choice(MATERIALS),
                n=rng.randint(3, 90),
                person=rng.choice(self.people),
            )
            texts.append(_Text(guid, e if "{e}" in template else -1, "", t))
            n_in_guid += 1
        # WebQA-style snippet ids: <32-hex guid>_<n>, n counting within the guid
        counter: dict[str, int] = defaultdict(int)
        for t in texts:
            guid = t.doc_id
            t.doc_id = f"{guid}_{counter[guid]}"
            counter[guid] += 1
        self.texts = texts
        self.entity_texts: list[list[int]] = [[] for _ in self.entities]
        self.texts_by_fact: dict[str, list[int]] = defaultdict(list)
        for i, t in enumerate(texts):
            if t.fact:
                self.entity_texts[t.entity].append(i)
                self.texts_by_fact[t.fact].append(i)

    # -- queries ------------------------------------------------------------------------
    def image_groups(self) -> dict[tuple, list[tuple[str, str, object]]]:
        """positives (image rows) -> questions [(cond attr, asked attr, cond value)] that
        exactly those images answer. Shapes and colours are distinct within an entity, so
        every picture answers its own three questions alone."""
        groups: dict[tuple, list[tuple[str, str, object]]] = {}
        for rows in self.entity_images:
            for r in rows:
                img = self.images[r]
                groups[(r,)] = [(c, a, img.attr(c)) for c, a in VISUAL_QUESTIONS]
        return groups

    def text_groups(self) -> tuple[list[tuple], list[tuple]]:
        """(decoration keys, non-visual fact keys): ("d", entity, deco, part) and
        ("f", entity, fact); each key is one set of positives."""
        deco = sorted(("d", e, d, p) for (e, d, p) in self.deco_docs)
        facts = sorted(("f", e, f) for (e, f) in self.fact_docs)
        return deco, facts

    def _other_entity(self, rng: random.Random, pool: list[int], e: int, of, n: int) -> list:
        out: list[int] = []
        for _ in range(4 * n):
            if len(out) == n or not pool:
                break
            x = pool[rng.randrange(len(pool))]
            if of(x) != e and x not in out:
                out.append(x)
        return out

    def image_query(
        self, rng: random.Random, pos: tuple[int, ...], q: tuple[str, str, object]
    ) -> dict:
        cond, asked, value = q
        first = self.images[pos[0]]
        e = first.entity
        text = _visual_question(rng, self.entities[e], cond, asked, value)
        ans = first.attr(asked)
        answer = COUNT_WORDS[ans] if asked == "count" else str(ans)
        neg_same = [r for r in self.entity_images[e] if r not in pos]
        neg_other = self._other_entity(
            rng, self._by_attr[(cond, value)], e, lambda r: self.images[r].entity, 5
        )
        txt = self.entity_texts[e]
        txt_neg = rng.sample(txt, min(3, len(txt)))
        return {
            "Q": text,
            "A": answer,
            "img_posFacts": [self.images[r].image_id for r in pos],
            "img_negFacts": [self.images[r].image_id for r in neg_same + neg_other],
            "txt_posFacts": [],
            "txt_negFacts": [self.texts[t].doc_id for t in txt_neg],
        }

    def text_query(self, rng: random.Random, key: tuple, q: int) -> dict:
        """``key`` from :meth:`text_groups`; ``q`` picks the question (template / kind)."""
        e = key[1]
        name = self.entities[e]
        if key[0] == "f":
            fact = key[2]
            dim = KINDS[name.rsplit(" ", 1)[1]]
            text = FACTS[fact][0][q].format(
                e=name, dim=dim, dimn="length" if dim == "long" else "height"
            )
            pos = self.fact_docs[(e, fact)]
            answer = self.entity_facts[e][fact] + (" metres" if fact == "size" else "")
            pool = self.texts_by_fact[fact]
        else:
            _, _, d, part = key
            shape, colour, count = self.decorations[e][d]
            cond, asked = DECORATION_QUESTIONS[part][q]
            text = _visual_question(rng, name, cond, asked, shape if cond == "shape" else colour)
            pos = [self.deco_docs[(e, d, part)]]
            answer = {"shape": shape, "colour": colour, "count": COUNT_WORDS[count]}[asked]
            pool = self.texts_by_fact[f"decoration:{part}"]
        neg_same = [t for t in self.entity_texts[e] if t not in pos]
        neg_other = self._other_entity(rng, pool, e, lambda t: self.texts[t].entity, 5)
        imgs = self.entity_images[e]
        return {
            "Q": text,
            "A": answer,
            "img_posFacts": [],
            "img_negFacts": [self.images[r].image_id for r in rng.sample(imgs, min(3, len(imgs)))],
            "txt_posFacts": [self.texts[t].doc_id for t in pos],
            "txt_negFacts": [self.texts[t].doc_id for t in neg_same + neg_other],
        }

    def _text_questions(self, key: tuple) -> int:
        return 2 if key[0] == "f" else len(DECORATION_QUESTIONS[key[3]])

    def grounding_query(self, rng: random.Random, combo: tuple, rows: list[int]) -> dict:
        shape, colour, count = combo
        text = rng.choice(GROUNDING_QUESTIONS).format(
            n=COUNT_WORDS[count], colour=colour, shapes=SHAPE_PLURAL[shape] if count > 1 else shape
        )
        pos = set(rows)
        neg: list[int] = []
        for a, v in (("shape", shape), ("colour", colour), ("count", count)):
            pool = self._by_attr[(a, v)]
            for _ in range(6):
                r = pool[rng.randrange(len(pool))]
                if r not in pos and r not in neg:
                    neg.append(r)
        t_pool = self.texts_by_fact["banner"]
        return {
            "Q": text,
            "A": _n_shapes(count, shape),
            "img_posFacts": [self.images[r].image_id for r in rows[:4]],
            "img_negFacts": [self.images[r].image_id for r in neg[:5]],
            "txt_posFacts": [],
            "txt_negFacts": [self.texts[t_pool[rng.randrange(len(t_pool))]].doc_id
                             for _ in range(2)],
        }  # fmt: skip

    def make_queries(self) -> dict[str, list[dict]]:
        """Split question groups (same positives) over test, dev, train: a group's questions
        all go to one split, so no test question's positives are seen in train. Text-answerable
        dev/test queries ask a decoration (a visual-sounding fact) with probability
        ``DECORATION_SHARE``, else a non-visual fact."""
        rng = random.Random(self.rng.random())
        self._by_attr: dict[tuple[str, object], list[int]] = defaultdict(list)
        for r, img in enumerate(self.images):
            for a in ATTRS:
                self._by_attr[(a, img.attr(a))].append(r)
        spec = self.spec
        img_groups = self.image_groups()
        img_keys = sorted(img_groups)
        rng.shuffle(img_keys)
        deco_keys, fact_keys = self.text_groups()
        rng.shuffle(deco_keys)
        rng.shuffle(fact_keys)
        # one sequence of text keys mixing decorations and facts at DECORATION_SHARE
        txt_keys: list[tuple] = []
        i_d = i_f = 0
        while i_d < len(deco_keys) or i_f < len(fact_keys):
            use_deco = rng.random() < DECORATION_SHARE
            if (use_deco and i_d < len(deco_keys)) or i_f >= len(fact_keys):
                txt_keys.append(deco_keys[i_d])
                i_d += 1
            else:
                txt_keys.append(fact_keys[i_f])
                i_f += 1
        splits: dict[str, list[dict]] = {}
        qids: set[str] = set()
        i_img = i_txt = 0
        for split, n_all, n_img in (
            ("test", spec.test, spec.test_image),
            ("dev", spec.dev, spec.dev_image),
            ("train", spec.train, spec.train_image),
        ):
            n_txt = n_all - n_img
            out: list[dict] = []
            if split != "train":
                take_i = img_keys[i_img : i_img + n_img]
                take_t = txt_keys[i_txt : i_txt + n_txt]
                i_img += len(take_i)
                i_txt += len(take_t)
                for k in take_i:
                    out.append(self.image_query(rng, k, rng.choice(img_groups[k])))
                for k in take_t:
                    out.append(self.text_query(rng, k, rng.randrange(self._text_questions(k))))
            else:
                # grounding questions over the training pictures, one per combination shown
                combos: dict[tuple, list[int]] = defaultdict(list)
                for k in img_keys[i_img:]:
                    im = self.images[k[0]]
                    combos[(im.shape, im.colour, im.count)].append(k[0])
                g_keys = sorted(combos)
                rng.shuffle(g_keys)
                rounds = -(-spec.train_grounding // max(1, len(g_keys)))
                for c in islice((c for _ in range(rounds) for c in g_keys), spec.train_grounding):
                    out.append(self.grounding_query(rng, c, combos[c]))
                n_img -= spec.train_grounding
                # every remaining group once, then its next questions, until the count is met
                rest_i = img_keys[i_img:]
                rest_t = txt_keys[i_txt:]
                cand_i = (
                    (k, img_groups[k][rnd])
                    for rnd in range(len(VISUAL_QUESTIONS))
                    for k in rest_i
                    if rnd < len(img_groups[k])
                )
                cand_t = (
                    (k, rnd) for rnd in range(2) for k in rest_t if rnd < self._text_questions(k)
                )
                for k, q in islice(cand_i, n_img):
                    out.append(self.image_query(rng, k, q))
                for k, t in islice(cand_t, n_txt):
                    out.append(self.text_query(rng, k, t))
            if len(out) != n_all:
                raise ValueError(f"{split}: could only make {len(out)} of {n_all} queries")
            rng.shuffle(out)
            for q in out:
                qid = _hex(rng)
                while qid in qids:
                    qid = _hex(rng)
                qids.add(qid)
                q["qid"] = qid
            splits[split] = [
                {
                    k: q[k]
                    for k in (
                        "qid",
                        "Q",
                        "A",
                        "img_posFacts",
                        "img_negFacts",
                        "txt_posFacts",
                        "txt_negFacts",
                    )
                }
                for q in out
            ]
        return splits


# -- writing ---------------------------------------------------------------------------------
def _jsonl(path: Path, rows: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _image_jobs(world: _World, seed: int, size: int) -> list[tuple]:
    del seed  # pictures depend on their attributes only
    return [(img.image_id, img.shape, img.colour, img.count, size) for img in world.images]


@contextmanager
def _renderer(jobs: list[tuple], workers: int) -> Iterator[Iterable[list[bytes]]]:
    """Chunks of imgs.tsv lines, in order. With workers > 1 the pool starts drawing at once,
    so the pictures are drawn while the caller writes the JSON files."""
    chunk = 2000
    if workers <= 1:
        yield (_render_lines(part) for part in _chunks(jobs, chunk))
        return
    pool = mp.get_context("spawn").Pool(workers)
    try:
        yield pool.imap(_render_lines, _chunks(jobs, chunk))
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def _write_tsv(chunks: Iterable[list[bytes]], out: Path, total: int, progress: bool) -> None:
    """imgs.tsv and its line index (offsets counted while writing)."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc="synth images", unit="img", file=sys.stderr,
               disable=not progress, mininterval=1.0)  # fmt: skip
    offset = 0
    with open(out / "imgs.tsv", "wb") as tsv, open(out / "imgs.lineidx.new", "w") as idx:
        for lines in chunks:
            for line in lines:
                image_id = line[: line.index(b"\t")].decode()
                idx.write(f"{image_id}\t{offset}\n")
                tsv.write(line)
                offset += len(line)
            bar.update(len(lines))
    bar.close()


def _write_dataset(
    world: _World, out: Path, cfg: SynthConfig, workers: int, progress: bool
) -> dict:
    jobs = _image_jobs(world, cfg.seed, cfg.image_size)
    with _renderer(jobs, workers) as chunks:
        splits = _write_json_files(world, out, cfg, progress)
        _write_tsv(chunks, out, len(jobs), progress)
    stats: dict = {
        "entities": len(world.entities),
        "images": len(world.images),
        "texts": len(world.texts),
    }
    for split, rows in splits.items():
        n_img = sum(1 for q in rows if q["img_posFacts"])
        pos = [len(q["img_posFacts"]) + len(q["txt_posFacts"]) for q in rows]
        stats[split] = {
            "queries": len(rows),
            "image_queries": n_img,
            "text_queries": len(rows) - n_img,
            "positives_hist": {str(k): pos.count(k) for k in sorted(set(pos))},
        }
    return stats


def _write_json_files(
    world: _World, out: Path, cfg: SynthConfig, progress: bool = False
) -> dict[str, list[dict]]:
    """Queries, qrels, text corpus and the three caption files; returns the query splits."""
    _say(progress, "making text documents and queries")
    world.make_texts()
    splits = world.make_queries()
    _say(progress, "writing queries, corpus and captions")
    for split, rows in splits.items():
        _jsonl(out / f"{split}.json", rows)
        if split != "train":
            with open(out / f"{split}_qrels.txt", "w", encoding="utf-8") as fh:
                for q in rows:
                    for d in q["img_posFacts"] + q["txt_posFacts"]:
                        fh.write(f"{q['qid']}\t{d}\t1\n")
    order = list(range(len(world.texts)))
    random.Random(cfg.seed + 1).shuffle(order)
    _jsonl(
        out / "all_docs.json",
        ({"snippet_id": world.texts[i].doc_id, "fact": world.texts[i].text} for i in order),
    )
    _jsonl(
        out / "all_imgs.json",
        ({"image_id": int(im.image_id), "caption": im.caption} for im in world.images),
    )
    _jsonl(
        out / "all_imgs_exp.json",
        ({"image_id": int(im.image_id), "caption": im.exp} for im in world.images),
    )
    _jsonl(
        out / "all_imgs_query.json",
        ({"image_id": int(im.image_id), "caption": im.vq} for im in world.images),
    )
    return splits


LAYOUT_FILES = (
    "train.json",
    "dev.json",
    "test.json",
    "all_docs.json",
    "all_imgs.json",
    "all_imgs_exp.json",
    "all_imgs_query.json",
    "imgs.tsv",
    "imgs.lineidx.new",
    "dev_qrels.txt",
    "test_qrels.txt",
)
STALE_FILES = ("train_all.json", "dev_all.json")  # mined from an older dataset: invalid now


def _saved_config(out: Path) -> dict | None:
    try:
        with open(out / CONFIG_FILE, encoding="utf-8") as fh:
            saved = json.load(fh)
    except (OSError, json.JSONDecodeError):
        return None
    return saved.get("config") if isinstance(saved, dict) else None


def _is_complete(out: Path, cfg: SynthConfig) -> bool:
    saved = _saved_config(out)
    return saved == asdict(cfg) and all((out / f).is_file() for f in LAYOUT_FILES)


def _same_dataset_older_make(out: Path, cfg: SynthConfig) -> bool:
    """The dir holds our dataset with this scale and seed, made by another generator version
    (or interrupted while replacing its files): safe to regenerate in place."""
    saved = _saved_config(out)
    return bool(saved) and saved.get("scale") == cfg.scale and saved.get("seed") == cfg.seed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale_tmp(out: Path) -> None:
    for p in out.parent.glob(f".{out.name}.synth-tmp-*"):
        try:
            pid = int(p.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)


def generate(
    out_dir: str | os.PathLike,
    scale: str = "small",
    seed: int = 0,
    progress: bool = True,
    force: bool = False,
    workers: int | None = None,
    image_size: int = 64,
) -> Path:
    """Write the synthetic benchmark at ``scale`` into ``out_dir``; returns its path.

    Re-running with the same arguments on a complete output is a no-op; on the same scale and
    seed made by another generator version (or an interrupted replace) it regenerates in place.
    Any other non-empty directory is refused unless ``force``. Regenerating in place replaces the
    layout's files and removes stale mined files (train_all.json, dev_all.json); other files are
    left alone. ``workers`` draw the pictures in parallel processes (default: all cores, at most
    8, for medium/paper; 1 otherwise). Writes ``synth_config.json`` (config, stats, sha256 of
    every file) last. An interrupted run leaves no partial output under ``out_dir``.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {tuple(SCALES)}, got {scale!r}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    spec = SCALES[scale]
    cfg = SynthConfig(scale=scale, seed=int(seed), image_size=image_size, spec=asdict(spec))
    out = Path(out_dir).resolve()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a directory")
    if out.is_dir() and _is_complete(out, cfg):
        if progress:
            log.info("synth: %s already holds scale=%s seed=%s; nothing to do", out, scale, seed)
        return out
    nonempty = out.is_dir() and any(out.iterdir())
    if nonempty and not force and not _same_dataset_older_make(out, cfg):
        raise FileExistsError(
            f"{out}: directory is not empty and is not a synthetic dataset with scale={scale} "
            f"seed={seed}; pass --force (force=True) to overwrite its dataset files"
        )
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if scale in ("medium", "paper") else 1
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(out)
    tmp = out.parent / f".{out.name}.synth-tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        _say(
            progress, f"building {spec.entities} entities, {spec.images} images, {spec.texts} texts"
        )
        world = _World(spec, cfg.seed)
        stats = _write_dataset(world, tmp, cfg, workers, progress)
        files = {f: sha256_file(tmp / f) for f in LAYOUT_FILES}
        atomic_write_json(
            tmp / CONFIG_FILE, {"config": asdict(cfg), "stats": stats, "files": files}
        )
        if not out.exists() or not nonempty:
            if out.exists():
                out.rmdir()
            os.replace(tmp, out)
        else:
            # mark the dir as ours but incomplete until the new config lands (an interrupted
            # replace is then regenerated by a re-run with the same scale and seed)
            marker = {"scale": cfg.scale, "seed": cfg.seed, "state": "replacing files"}
            atomic_write_json(out / CONFIG_FILE, {"config": marker})
            for f in STALE_FILES:
                (out / f).unlink(missing_ok=True)
            for f in (*LAYOUT_FILES, CONFIG_FILE):
                os.replace(tmp / f, out / f)
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_config(out_dir: str | os.PathLike) -> dict:
    """The ``synth_config.json`` of a generated dataset (config, stats, file hashes)."""
    return read_json(Path(out_dir) / CONFIG_FILE)
