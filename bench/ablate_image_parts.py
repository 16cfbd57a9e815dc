"""Image-doc ablation for a checkpoint (RESULTS.md, Table 3 diagnosis): Image / Multi MRR@10
(test, x100) with image docs encoded as caption + pixels (Eq. 3), caption only, pixels only.

    .venv/bin/python bench/ablate_image_parts.py CHECKPOINT DATA_DIR
"""

import sys

import numpy as np
import torch

from univl_fast.data.layout import DatasetDir
from univl_fast.evaluation.embeddings import evaluate_embeddings
from univl_fast.model import UniVLDR
from univl_fast.train.encode import encode_corpus, encode_queries

torch.set_num_threads(1)

ck, data = sys.argv[1], sys.argv[2]
m = UniVLDR.from_pretrained(ck)
ds = DatasetDir(data)
qrels = ds.qrels("test")
qs = [q for q in ds.queries("test") if q.qid in qrels]
c = encode_corpus(m, ds, "plain", progress=False)
qv = encode_queries(m, qs, progress=False)
cap = {d.doc_id: d.caption for d in ds.image_docs("plain")}
img_rows = [i for i, mm in enumerate(c.modalities) if mm == "image"]
v = c.vectors.copy()
v[img_rows] = m.encode_text_docs([cap[c.ids[i]] for i in img_rows])
r_full = evaluate_embeddings(
    qv, [q.qid for q in qs], c.vectors, c.ids, c.modalities, qrels, by_modality=True
)
r_cap = evaluate_embeddings(
    qv, [q.qid for q in qs], v, c.ids, c.modalities, qrels, by_modality=True
)
# pixels only
img_raw = []
for _ids, ims in ds.images.iter_images([c.ids[i] for i in img_rows], 64):
    px = torch.stack([m.preprocess(im) for im in ims])
    with torch.no_grad():
        img_raw.append(torch.nn.functional.normalize(m.image_features(px), dim=-1).numpy())
v2 = c.vectors.copy()
v2[img_rows] = np.concatenate(img_raw)
r_pix = evaluate_embeddings(
    qv, [q.qid for q in qs], v2, c.ids, c.modalities, qrels, by_modality=True
)
for name, r in (
    ("caption+pixels (Eq. 3)", r_full),
    ("caption only", r_cap),
    ("pixels only", r_pix),
):
    print(f"| {name} | {100 * r['image']['MRR@10']:.2f} | {100 * r['MRR@10']:.2f} |")
