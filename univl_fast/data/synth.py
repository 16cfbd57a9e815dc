"""The built-in synthetic benchmark: WebQA's structure, drawn with Pillow (torch-free).

Entities with made-up names ("Varnok Bridge") each have several **image documents**: small
PNG pictures of 1-4 copies of one coloured shape. Shape, colour and count show only in the
pixels; the caption names the entity only ("A view of the Varnok Bridge."). Each entity's
images differ in their attributes, so the caption cannot tell them apart, and every attribute
value appears across many entities, so the pixels cannot either. **Image queries** name the
entity and one attribute and ask for another ("How many triangles are in the picture of the
Varnok Bridge?"): only an image answers them, found by caption *and* pixels together.
**Text documents** state non-visual facts ("The Varnok Bridge was built in 1873."); **text
queries** ask for them. Distractors share the entity or the attribute / fact type.

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

from univl_fast.utils.io import atomic_write_json, sha256_file

SYNTH_VERSION = 1
CONFIG_FILE = "synth_config.json"
SEP = " [SEP] "

# -- vocabulary ------------------------------------------------------------------------------
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
SHAPE_PLURAL = {s: ("crosses" if s == "cross" else s + "s") for s in SHAPES}
COLOURS = {  # well separated in RGB, all far from the neutral backgrounds
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 225),
    "yellow": (245, 205, 0),
    "purple": (140, 40, 185),
    "orange": (250, 125, 10),
    "black": (20, 20, 20),
}
COLOUR_NAMES = tuple(COLOURS)
COUNTS = (1, 2, 3, 4)
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
TIMES_WORDS = {1: "once", 2: "twice", 3: "three times", 4: "four times"}
BACKGROUNDS = ((238, 238, 238), (214, 214, 214), (200, 206, 214), (228, 218, 200))
ATTRS = ("shape", "colour", "count")

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
    "v",
    "t",
    "m",
    "k",
    "s",
    "r",
    "l",
    "b",
    "d",
    "g",
    "n",
    "p",
    "f",
    "h",
    "z",
    "br",
    "tr",
    "gr",
    "st",
    "dr",
    "c",
    "th",
    "j",
    "w",
)
NUCLEI = ("a", "e", "i", "o", "u", "ai", "ei", "ou", "ar", "el", "an", "or")
CODAS = ("", "", "n", "k", "r", "s", "th", "l", "x", "nd")
MATERIALS = (
    "granite",
    "marble",
    "limestone",
    "sandstone",
    "brick",
    "oak",
    "iron",
    "bronze",
    "concrete",
    "basalt",
    "slate",
    "copper",
)
ORG_KINDS = ("Trust", "Heritage Society", "Foundation", "City Council", "Guild", "Company")

CAPTIONS = (
    "A photo of the {e}.",
    "The {e} on a clear day.",
    "A view of the {e}.",
    "Visitors at the {e}.",
    "The {e}, photographed in the afternoon.",
    "An old picture of the {e}.",
    "The {e} seen from a distance.",
    "{e}, a postcard view.",
)

# fact type -> (question templates, statement templates); {e} entity, {v} value,
# {dim} long|tall, {dimn} length|height
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

# image question templates: (condition attr, asked attr) -> templates;
# {e} entity, {shapes} plural shape, {colour}, {times} once/twice/..., {n} count word
IMAGE_QUESTIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("shape", "count"): (
        "How many {shapes} are in the picture of the {e}?",
        "How many {shapes} can be seen in the photo of the {e}?",
    ),
    ("shape", "colour"): (
        "What colour are the {shapes} in the photo of the {e}?",
        "Which colour are the {shapes} shown at the {e}?",
    ),
    ("colour", "shape"): (
        "What shape is drawn in {colour} at the {e}?",
        "Which shape is {colour} in the image of the {e}?",
    ),
    ("colour", "count"): (
        "How many {colour} shapes are in the picture of the {e}?",
        "How many {colour} shapes does the photo of the {e} show?",
    ),
    ("count", "shape"): (
        "Which shape appears {times} in the picture of the {e}?",
        "What shape is shown {times} in the photo of the {e}?",
    ),
    ("count", "colour"): (
        "What colour is the shape shown {times} at the {e}?",
        "Which colour has the shape that appears {times} in the image of the {e}?",
    ),
}


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


SCALES: dict[str, ScaleSpec] = {
    "tiny": ScaleSpec(30, 150, 250, 150, 40, 40, 75, 20, 20),
    "small": ScaleSpec(400, 2000, 3000, 3600, 300, 500, 1800, 150, 250),
    "medium": ScaleSpec(4000, 20000, 30000, 36000, 3000, 5000, 18000, 1500, 2500),
    # the paper's corpus (Table 5): 389,750 images, 787,697 texts; WebQA's query splits
    "paper": ScaleSpec(77950, 389750, 787697, 31766, 5000, 4966, 16400, 2554, 2511),
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
    1: (((32, 32),), 18),
    2: (((17, 32), (47, 32)), 13),
    3: (((17, 18), (47, 18), (32, 46)), 12),
    4: (((17, 17), (47, 17), (17, 47), (47, 47)), 12),
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
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            ang = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
        draw.polygon(pts, fill=fill)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(f"unknown shape {shape!r}")


def render_image(
    shape: str, colour: str, count: int, background: int, seed: int, size: int = 64
) -> bytes:
    """Draw ``count`` copies of a ``colour`` ``shape`` on a neutral background; PNG bytes.

    ``seed`` drives small position/size jitter (deterministic). Shapes are large (radius
    12-18 px at 64 px) so a small ViT learns shape, colour and count quickly.
    """
    rng = random.Random(seed)
    img = Image.new("RGB", (size, size), BACKGROUNDS[background % len(BACKGROUNDS)])
    draw = ImageDraw.Draw(img)
    centres, radius = _LAYOUTS[count]
    flip = rng.random() < 0.5  # transpose the layout half the time (2 side by side / stacked)
    scale = size / 64.0
    for cx, cy in centres:
        if flip:
            cx, cy = cy, cx
        jx, jy = rng.uniform(-2, 2), rng.uniform(-2, 2)
        r = radius + rng.uniform(-1, 1)
        _draw_shape(draw, shape, (cx + jx) * scale, (cy + jy) * scale, r * scale, COLOURS[colour])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _render_lines(chunk: list[tuple]) -> list[bytes]:
    """Worker: ``(image_id, shape, colour, count, bg, seed, size)`` -> imgs.tsv lines."""
    out = []
    for image_id, shape, colour, count, bg, seed, size in chunk:
        png = render_image(shape, colour, count, bg, seed, size)
        out.append(image_id.encode() + b"\t" + b64encode(png) + b"\n")
    return out


# -- the world -------------------------------------------------------------------------------
@dataclass
class _Image:
    image_id: str
    entity: int
    shape: str
    colour: str
    count: int
    bg: int
    caption: str
    exp: str
    vq: str

    def attr(self, name: str):
        return getattr(self, name)


@dataclass
class _Text:
    doc_id: str
    entity: int  # -1 for fillers not about an entity
    fact: str  # fact type or "" for fillers
    text: str


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
        print(f"synth: {msg}", file=sys.stderr, flush=True)


def _hex(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


class _World:
    """Everything but the pixels, built in memory from one seeded RNG."""

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

    # images: 4-6 per entity, distinct (shape, colour, count) within an entity
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
        for e, n in enumerate(per):
            name = self.entities[e]
            seen: set[tuple] = set()
            rows = []
            while len(rows) < n:
                key = (rng.choice(SHAPES), rng.choice(COLOUR_NAMES), rng.choice(COUNTS))
                if key in seen:
                    continue
                seen.add(key)
                caption = rng.choice(CAPTIONS).format(e=name)
                img = _Image(
                    str(ids[len(self.images)]),
                    e,
                    *key,
                    rng.randrange(len(BACKGROUNDS)),
                    caption,
                    "",
                    "",
                )
                img.exp = caption + SEP + _describe(img)
                img.vq = caption + SEP + _verbal_question(rng, *key)
                rows.append(len(self.images))
                self.images.append(img)
            self.entity_images.append(rows)

    # texts: 4-7 fact types per entity, each stated once (sometimes twice), then fillers
    def _make_texts(self, rng: random.Random) -> None:
        spec = self.spec
        texts: list[_Text] = []
        self.fact_docs: dict[tuple[int, str], list[int]] = {}
        self.entity_facts: list[dict[str, str]] = []
        budget = spec.texts
        para_p = 0.2
        for e, name in enumerate(self.entities):
            guid = _hex(rng)
            kinds = rng.sample(FACT_TYPES, rng.randint(4, 7))
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
        if len(texts) > budget:
            raise ValueError(f"scale needs {len(texts)} fact documents but only {budget} texts")
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
        for i, t in enumerate(texts):
            if t.fact:
                self.entity_texts[t.entity].append(i)
        self.texts_by_fact: dict[str, list[int]] = defaultdict(list)
        for i, t in enumerate(texts):
            if t.fact:
                self.texts_by_fact[t.fact].append(i)

    # -- queries ------------------------------------------------------------------------
    def image_groups(self) -> dict[tuple, list[tuple[str, str, object]]]:
        """positives (image rows) -> questions [(cond attr, asked attr, cond value)] that
        exactly those images answer, all agreeing on the answer."""
        groups: dict[tuple, list[tuple[str, str, object]]] = {}
        for rows in self.entity_images:
            for cond in ATTRS:
                by_value: dict[object, list[int]] = defaultdict(list)
                for r in rows:
                    by_value[self.images[r].attr(cond)].append(r)
                for value, qual in sorted(by_value.items(), key=lambda kv: str(kv[0])):
                    if len(qual) > 4:
                        continue
                    for asked in ATTRS:
                        if asked == cond or len({self.images[r].attr(asked) for r in qual}) != 1:
                            continue
                        groups.setdefault(tuple(qual), []).append((cond, asked, value))
        return groups

    def image_query(
        self, rng: random.Random, pos: tuple[int, ...], q: tuple[str, str, object]
    ) -> dict:
        cond, asked, value = q
        first = self.images[pos[0]]
        e = first.entity
        fmt = {"e": self.entities[e]}
        if cond == "shape":
            fmt["shapes"] = SHAPE_PLURAL[value]
        elif cond == "colour":
            fmt["colour"] = value
        else:
            fmt["times"] = TIMES_WORDS[value]
        text = rng.choice(IMAGE_QUESTIONS[(cond, asked)]).format(**fmt)
        ans = first.attr(asked)
        answer = COUNT_WORDS[ans] if asked == "count" else str(ans)
        neg_same = [r for r in self.entity_images[e] if r not in pos]
        pool = self._by_attr[(cond, value)]
        neg_other: list[int] = []
        for _ in range(20):
            if len(neg_other) == 5:
                break
            r = pool[rng.randrange(len(pool))]
            if self.images[r].entity != e and r not in neg_other:
                neg_other.append(r)
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

    def text_query(self, rng: random.Random, key: tuple[int, str], template: int) -> dict:
        e, fact = key
        name = self.entities[e]
        dim = KINDS[name.rsplit(" ", 1)[1]]
        text = FACTS[fact][0][template].format(
            e=name, dim=dim, dimn="length" if dim == "long" else "height"
        )
        pos = self.fact_docs[key]
        neg_same = [t for t in self.entity_texts[e] if t not in pos]
        pool = self.texts_by_fact[fact]
        neg_other: list[int] = []
        for _ in range(20):
            if len(neg_other) == 5:
                break
            t = pool[rng.randrange(len(pool))]
            if self.texts[t].entity != e and t not in neg_other:
                neg_other.append(t)
        imgs = self.entity_images[e]
        return {
            "Q": text,
            "A": self.entity_facts[e][fact] + (" metres" if fact == "size" else ""),
            "img_posFacts": [],
            "img_negFacts": [self.images[r].image_id for r in rng.sample(imgs, min(3, len(imgs)))],
            "txt_posFacts": [self.texts[t].doc_id for t in pos],
            "txt_negFacts": [self.texts[t].doc_id for t in neg_same + neg_other],
        }

    def make_queries(self) -> dict[str, list[dict]]:
        """Split question groups (same positives) over test, dev, train: a group's questions
        all go to one split, so no test question's positives-and-condition is seen in train."""
        rng = random.Random(self.rng.random())
        self._by_attr: dict[tuple[str, object], list[int]] = defaultdict(list)
        for r, img in enumerate(self.images):
            for a in ATTRS:
                self._by_attr[(a, img.attr(a))].append(r)
        spec = self.spec
        img_groups = self.image_groups()
        img_keys = sorted(img_groups)
        rng.shuffle(img_keys)
        txt_keys = sorted(self.fact_docs)
        rng.shuffle(txt_keys)
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
                    out.append(self.text_query(rng, k, rng.randrange(2)))
            else:
                # every remaining group once, then second questions, until the count is met
                rest_i = img_keys[i_img:]
                rest_t = txt_keys[i_txt:]
                rounds = max((len(v) for v in img_groups.values()), default=0)
                cand_i = (
                    (k, img_groups[k][rnd])
                    for rnd in range(rounds)
                    for k in rest_i
                    if rnd < len(img_groups[k])
                )
                cand_t = ((k, t) for t in range(2) for k in rest_t)
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
    return [
        (img.image_id, img.shape, img.colour, img.count, img.bg,
         (seed * 1_000_003 + i) & 0x7FFFFFFF, size)
        for i, img in enumerate(world.images)
    ]  # fmt: skip


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
            print(
                f"synth: {out} already holds scale={scale} seed={seed}; nothing to do",
                file=sys.stderr,
            )
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
        os.chmod(tmp / CONFIG_FILE, 0o644)  # mkstemp made it 0600; the data files are 0644
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
    from univl_fast.utils.io import read_json

    return read_json(Path(out_dir) / CONFIG_FILE)
