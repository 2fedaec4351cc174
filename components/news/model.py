"""PerCoNet and its NRMS baseline, in one file: vocabularies, featurised articles, the explicit
persona rule, the layers and both models.

NRMS (Wu et al., 2019): a news encoder (word embeddings -> multi-head self-attention -> additive
attention) over the title, a user encoder (self-attention over the clicked articles -> additive
attention) and the dot product as click score.

PerCoNet (arXiv 2304.07923, our reading, METHODS.md §4):
- news: the title and the abstract are two *views*, each encoded like NRMS's news encoder; an
  entity view pools the article's entity embeddings; a view-level additive attention mixes the views
  that exist (an empty abstract is no view). A cross-view InfoNCE (title_i vs abstract_j over the
  articles of the batch, symmetric) pulls each article's two views together.
- user: an explicit persona (the prominent entities of the recent history, :func:`select_persona`)
  as entity embeddings in the space of the entity view. By default (``persona_fusion: sum``) the
  self-attended history and the persona are pooled apart and added; ``joint`` pools them in one
  attention. The persona's selection weight is a prior on its attention logits.
- explain: the user vector is a weighted sum of history and persona tokens, so each persona
  entity's share of a recommendation's score is exact (:func:`explain`).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from components.config import NewsConfig
from components.layers import MLP, info_nce
from components.news.mind import parse_entities

PAD, UNK = 0, 1
_WORD = re.compile(r"\w+")


# ------------------------------------------------------------------------------------------------
# Vocabularies and featurised articles


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens (punctuation dropped)."""
    return _WORD.findall(text.lower()) if text else []


@dataclass
class Vocabulary:
    """Words of titles and abstracts; index 0 is padding, 1 unknown."""

    words: list[str]

    def __post_init__(self):
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, texts, min_count: int = 1, max_size: int = 50000) -> "Vocabulary":
        """The ``max_size`` most frequent words seen ``min_count`` times or more (ties: alphabetical)."""
        counts = Counter(w for t in texts for w in tokenize(t))
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(["<pad>", "<unk>", *kept[: max_size - 2]])

    def encode(self, text: str, max_len: int) -> list[int]:
        """Token ids of the first ``max_len`` words, right-padded with 0."""
        ids = [self.index.get(w, UNK) for w in tokenize(text)[:max_len]]
        return ids + [PAD] * (max_len - len(ids))

    def __len__(self) -> int:
        return len(self.words)


@dataclass
class EntityVocabulary:
    """Entities by WikidataId with their label and document frequency; 0 padding, 1 unknown."""

    ids: list[str]
    labels: list[str]
    doc_freq: list[int]
    n_docs: int

    def __post_init__(self):
        self.index = {w: i for i, w in enumerate(self.ids)}

    @classmethod
    def build(cls, news: pd.DataFrame) -> "EntityVocabulary":
        """Every entity of the articles' title and abstract entity lists."""
        df: Counter = Counter()
        labels: dict[str, str] = {}
        for t, a in zip(news["title_entities"], news["abstract_entities"]):
            seen = set()
            for e in parse_entities(t) + parse_entities(a):
                labels.setdefault(e["WikidataId"], e["Label"])
                seen.add(e["WikidataId"])
            df.update(seen)
        ids = sorted(df, key=lambda w: (-df[w], w))
        return cls(["<pad>", "<unk>", *ids], ["", "", *(labels[i] for i in ids)], [0, 0, *(df[i] for i in ids)],
                   len(news))

    def idf(self) -> np.ndarray:
        """Smoothed inverse document frequency per entity index (sklearn's formula)."""
        df = np.asarray(self.doc_freq, dtype=np.float64)
        return np.log((1 + self.n_docs) / (1 + df)) + 1

    def __len__(self) -> int:
        return len(self.ids)


def article_entities(title_entities: str, abstract_entities: str, vocab: EntityVocabulary,
                     abstract: bool = True) -> list[tuple[int, float]]:
    """(entity index, confidence) of an article: title entities first, then abstract ones, each entity
    once with its highest confidence; ``abstract=False`` keeps the title's only."""
    best: dict[int, float] = {}
    order: list[int] = []
    for k, text in enumerate((title_entities, abstract_entities)):
        if k == 1 and not abstract:
            break
        for e in sorted(parse_entities(text), key=lambda e: -float(e["Confidence"])):
            i = vocab.index.get(e["WikidataId"], UNK)
            if i not in best:
                order.append(i)
            best[i] = max(best.get(i, 0.0), float(e["Confidence"]))
    return [(i, best[i]) for i in order]


class NewsIndex:
    """Featurised articles of one MIND folder as tensors; row 0 is an all-padding article.

    ``title`` (N+1, max_title_len), ``abstract`` (N+1, max_abstract_len), ``entities`` and
    ``entity_conf`` (N+1, max_news_entities) plus the full entity lists the persona rule reads.
    """

    def __init__(self, news: pd.DataFrame, vocab: Vocabulary, entity_vocab: EntityVocabulary, cfg: NewsConfig):
        self.cfg, self.vocab, self.entity_vocab = cfg, vocab, entity_vocab
        self.ids = ["<pad>", *news["news_id"].tolist()]
        self.row = {n: i for i, n in enumerate(self.ids)}
        n, le = len(self.ids), cfg.max_news_entities
        self.title = torch.tensor([[PAD] * cfg.max_title_len] + [vocab.encode(t, cfg.max_title_len)
                                                                 for t in news["title"]], dtype=torch.long)
        self.abstract = torch.tensor([[PAD] * cfg.max_abstract_len] + [vocab.encode(a, cfg.max_abstract_len)
                                                                       for a in news["abstract"]], dtype=torch.long)
        self.entities = torch.zeros(n, le, dtype=torch.long)
        self.entity_conf = torch.zeros(n, le)
        self.persona_entities: list[list[tuple[int, float]]] = [[]]
        for r, (t, a) in enumerate(zip(news["title_entities"], news["abstract_entities"]), start=1):
            ents = article_entities(t, a, entity_vocab)
            for k, (i, c) in enumerate(ents[:le]):
                self.entities[r, k], self.entity_conf[r, k] = i, c
            self.persona_entities.append(ents if cfg.persona_abstract_entities
                                         else article_entities(t, a, entity_vocab, abstract=False))
        self.idf = entity_vocab.idf() if cfg.persona_idf else np.ones(len(entity_vocab))

    def to(self, device) -> "NewsIndex":
        """Move the tensors to ``device`` (once, instead of every batch); returns self."""
        for name in ("title", "abstract", "entities", "entity_conf"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def rows(self, news_ids) -> np.ndarray:
        """Row of each news id; an id this index does not hold is an error that names it."""
        try:
            return np.fromiter((self.row[i] for i in news_ids), dtype=np.int64, count=len(news_ids))
        except KeyError as e:
            raise KeyError(f"news id {e.args[0]} is not in this news.tsv") from None

    def features(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """The tensors of the given rows (for one forward pass)."""
        return {"title": self.title[rows], "abstract": self.abstract[rows], "entities": self.entities[rows],
                "entity_conf": self.entity_conf[rows]}

    def history(self, news_ids: list[str]) -> np.ndarray:
        """The ``history_len`` most recent clicked rows, oldest first, right-padded with 0."""
        rows = self.rows(news_ids[-self.cfg.history_len:]) if news_ids else np.zeros(0, dtype=np.int64)
        return np.pad(rows, (0, self.cfg.history_len - len(rows)))

    def persona(self, history_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(entity indices, weights) of :func:`select_persona`, padded to ``persona_top_k``."""
        return select_persona([self.persona_entities[r] for r in history_rows if r], self.idf, self.cfg.persona_top_k,
                              self.cfg.persona_half_life, self.cfg.persona_confidence_power)


def select_persona(history: list[list[tuple[int, float]]], idf: np.ndarray, top_k: int, half_life: float,
                   confidence_power: float) -> tuple[np.ndarray, np.ndarray]:
    """The explicit persona: the ``top_k`` entities of the clicked articles (oldest first) by

        score(e) = sum over clicks i mentioning e of  Confidence(e, i) ** confidence_power
                                                       * 0.5 ** (age_i / half_life) * idf(e)

    where age is 0 for the newest click, so recent, confidently linked, distinctive entities win.
    Unknown entities (index 1) are skipped; ties go to the smaller entity index. Returns (ids, scores)
    padded with 0 to ``top_k``; ids of 0 are padding.
    """
    score: dict[int, float] = {}
    n = len(history)
    for age, ents in zip(range(n - 1, -1, -1), history):
        decay = 0.5 ** (age / half_life)
        for e, conf in ents:
            if e > UNK:
                score[e] = score.get(e, 0.0) + conf ** confidence_power * decay * float(idf[e])
    best = sorted(score.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
    ids = np.zeros(top_k, dtype=np.int64)
    weights = np.zeros(top_k, dtype=np.float32)
    for k, (e, s) in enumerate(best):
        ids[k], weights[k] = e, s
    return ids, weights


# ------------------------------------------------------------------------------------------------
# Layers


def _masked_fill_min(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x.masked_fill(~mask, torch.finfo(x.dtype).min)


class AdditiveAttention(nn.Module):
    """a_i = softmax(q^T tanh(W x_i + b) + prior_i) over the unmasked i; returns (sum a_i x_i, a).
    A row with nothing unmasked pools to zeros."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(dim, hidden)
        self.query = nn.Linear(hidden, 1, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, prior: torch.Tensor | None = None):
        logits = self.query(torch.tanh(self.proj(x))).squeeze(-1)
        if prior is not None:
            logits = logits + prior
        w = torch.softmax(_masked_fill_min(logits.float(), mask), dim=-1) * mask
        return torch.einsum("bl,bld->bd", w.to(x.dtype), x), w


class SelfAttention(nn.Module):
    """Multi-head self-attention as in NRMS (heads concatenated, no output projection), padding masked."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, l, d = x.shape
        q, k, v = self.qkv(x).view(b, l, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        # An all-padding row would softmax over nothing (NaN): let it attend to its first slot;
        # its output is masked away by the pooling after.
        keys = mask.clone()
        keys[:, 0] |= ~mask.any(-1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keys[:, None, None, :])
        return out.transpose(1, 2).reshape(b, l, d)


class TextEncoder(nn.Module):
    """NRMS news encoder: word embeddings -> self-attention -> additive attention -> one vector."""

    def __init__(self, embedding: nn.Embedding, cfg: NewsConfig):
        super().__init__()
        self.embedding = embedding
        self.attention = SelfAttention(cfg.embed_dim, cfg.num_heads)
        self.pool = AdditiveAttention(cfg.embed_dim, cfg.attention_hidden)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(vectors, has_text) of (N, L) token ids."""
        mask = tokens != PAD
        # Without positions, cutting the all-padding tail of the batch changes nothing but the time.
        used = mask.any(0)
        length = int(used.nonzero().max()) + 1 if bool(used.any()) else 1
        tokens, mask = tokens[:, :length], mask[:, :length]
        # Dropout on the word embeddings only (NRMS also drops after self-attention; on CPU the
        # Bernoulli draws took a fifth of the step for little gain here).
        x = self.dropout(self.embedding(tokens))
        v, _ = self.pool(self.attention(x, mask), mask)
        return v, mask.any(-1)


class UserHistory(nn.Module):
    """NRMS user encoder's first half: self-attention over the clicked articles' vectors."""

    def __init__(self, cfg: NewsConfig):
        super().__init__()
        self.attention = SelfAttention(cfg.embed_dim, cfg.num_heads)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, news: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.attention(self.dropout(news), mask))


# ------------------------------------------------------------------------------------------------
# Models. Both take a batch of B users with C candidates each, the candidates' and histories' rows
# pointing into one set of unique articles encoded once per step.


class NewsRecommender(nn.Module):
    """What both models share: user vector from the history (+ persona), dot-product click scores."""

    kind = "base"

    def __init__(self, cfg: NewsConfig, n_words: int, n_entities: int):
        super().__init__()
        self.cfg = cfg
        self.word_embedding = nn.Embedding(n_words, cfg.embed_dim, padding_idx=PAD)
        self.history = UserHistory(cfg)
        self.user_pool = AdditiveAttention(cfg.embed_dim, cfg.attention_hidden)
        self.no_history = nn.Parameter(torch.zeros(cfg.embed_dim))  # the user vector of a cold user
        nn.init.normal_(self.word_embedding.weight, std=0.1)
        with torch.no_grad():
            self.word_embedding.weight[PAD].zero_()

    def encode_news(self, news: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(vectors (N, D), auxiliary loss) of articles given as :meth:`NewsIndex.features`."""
        raise NotImplementedError

    def encode_user(self, history: torch.Tensor, history_mask: torch.Tensor, persona: torch.Tensor,
                    persona_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(user vectors (B, D), tokens (B, T, D), weights (B, T)) from history vectors (B, H, D), with
        user = sum_t weight_t token_t exactly (``explain`` relies on it); a cold user gets ``no_history``."""
        tokens = self.history(history, history_mask)
        user, w = self.user_pool(tokens, history_mask)
        return self._cold(user, history_mask), tokens, w

    def _cold(self, user: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        cold = ~mask.any(-1, keepdim=True)
        return torch.where(cold, self.no_history.to(user.dtype).expand_as(user), user)

    def forward(self, news: dict[str, torch.Tensor], history: torch.Tensor, candidates: torch.Tensor,
                persona: torch.Tensor, persona_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(click scores (B, C), auxiliary loss): ``history`` (B, H) and ``candidates`` (B, C) index the
        rows of ``news``, row 0 of which is the padding article."""
        vecs, aux = self.encode_news(news)
        user, _, _ = self.encode_user(vecs[history], history != 0, persona, persona_weight)
        return torch.einsum("bd,bcd->bc", user, vecs[candidates]), aux


class NRMS(NewsRecommender):
    """NRMS: title self-attention news encoder, history self-attention user encoder (no persona)."""

    kind = "nrms"

    def __init__(self, cfg: NewsConfig, n_words: int, n_entities: int):
        super().__init__(cfg, n_words, n_entities)
        self.title = TextEncoder(self.word_embedding, cfg)

    def encode_news(self, news):
        tokens = news["title"]
        if self.cfg.nrms_abstract:
            tokens = torch.cat([tokens, news["abstract"]], dim=1)  # no positions: padding in between is harmless
        v, _ = self.title(tokens)
        return v, v.new_zeros(())


class PerCoNet(NewsRecommender):
    """Title and abstract views (+ entity view) with a cross-view InfoNCE; user = history + persona."""

    kind = "perconet"

    def __init__(self, cfg: NewsConfig, n_words: int, n_entities: int):
        super().__init__(cfg, n_words, n_entities)
        d = cfg.embed_dim
        self.title = TextEncoder(self.word_embedding, cfg)
        self.abstract = TextEncoder(self.word_embedding, cfg)
        self.entity_embedding = nn.Embedding(n_entities, d, padding_idx=PAD)
        nn.init.normal_(self.entity_embedding.weight, std=0.1)
        with torch.no_grad():
            self.entity_embedding.weight[PAD].zero_()
        self.entity_pool = AdditiveAttention(d, cfg.attention_hidden)
        self.entity_out = nn.Linear(d, d)      # entity space -> news space, shared by articles and persona
        self.view_pool = AdditiveAttention(d, cfg.attention_hidden)
        self.contrast_head = MLP(d, (d,), d)  # SimCLR-style projection
        self.persona_pool = AdditiveAttention(d, cfg.attention_hidden)
        self.persona_prior = nn.Parameter(torch.tensor(1.0))  # scale of log persona weight on attention logits
        self.dropout = nn.Dropout(cfg.dropout)

    def encode_news(self, news):
        t, has_t = self.title(news["title"])
        a, has_a = self.abstract(news["abstract"])
        ents = news["entities"]
        emask = ents != PAD
        conf = news["entity_conf"].clamp_min(1e-3).log()  # the linker's confidence as a prior
        e, _ = self.entity_pool(self.dropout(self.entity_embedding(ents)), emask, conf)
        e = self.entity_out(e)
        has_e = emask.any(-1)
        views = torch.stack([t, a, e], dim=1)
        vmask = torch.stack([has_t, has_a, has_e], dim=1)
        vmask[:, 0] |= ~vmask.any(-1)  # the padding article keeps one (zero) view
        vec, _ = self.view_pool(views, vmask)
        aux = vec.new_zeros(())
        both = has_t & has_a
        if self.training and self.cfg.contrastive_weight > 0 and int(both.sum()) > 1:
            aux = self.cfg.contrastive_weight * info_nce(self.contrast_head(t[both]).float(),
                                                         self.contrast_head(a[both]).float(),
                                                         self.cfg.contrastive_temperature, normalize=True)
        return vec, aux

    def encode_user(self, history, history_mask, persona, persona_weight):
        h = self.history(history, history_mask)
        p = self.entity_out(self.dropout(self.entity_embedding(persona))).to(h.dtype)
        pmask = persona != PAD
        # log(w / max w): 0 for the top entity, negative for weaker ones; a learnt scale.
        top = persona_weight.amax(-1, keepdim=True).clamp_min(1e-9) if persona.shape[1] else persona_weight
        pprior = self.persona_prior * (persona_weight.clamp_min(1e-9) / top).log()
        tokens, mask = torch.cat([h, p], 1), torch.cat([history_mask, pmask], 1)
        if self.cfg.persona_fusion == "joint":  # one attention over history and persona tokens together
            prior = torch.cat([torch.zeros_like(history_mask, dtype=pprior.dtype), pprior.masked_fill(~pmask, 0)], 1)
            user, w = self.user_pool(tokens, mask, prior)
        else:  # "sum": history and persona pooled apart, then added, so the persona is never drowned out
            uh, wh = self.user_pool(h, history_mask)
            up, wp = self.persona_pool(p, pmask, pprior)
            user, w = uh + up, torch.cat([wh, wp], 1)
        return self._cold(user, mask), tokens, w


MODELS = {"nrms": NRMS, "perconet": PerCoNet}


def build_model(kind: str, cfg: NewsConfig, n_words: int, n_entities: int) -> NewsRecommender:
    """A fresh ``"perconet"`` or ``"nrms"`` model for the given vocabulary sizes."""
    if kind not in MODELS:
        raise ValueError(f"unknown news model {kind!r}; choose one of {sorted(MODELS)}")
    return MODELS[kind](cfg, n_words, n_entities)


# ------------------------------------------------------------------------------------------------
# Explanations


@torch.no_grad()
def explain(model: NewsRecommender, index: NewsIndex, history: list[str], candidates: list[str],
            top: int | None = None) -> list[dict]:
    """Per candidate (best first): its click score and the persona entities behind it.

    The score is sum_t a_t (x_t . n) over the user's history and persona tokens x_t, so
    ``contribution`` = a_t (x_t . n) of a persona entity is its exact share of the score;
    ``persona_weight`` is its selection score from :func:`select_persona`.
    """
    top = top or index.cfg.explain_top
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        hist = index.history(history)
        pids, pw = index.persona(hist)
        rows = torch.as_tensor(np.concatenate([hist, index.rows(candidates)]), device=index.title.device)
        vecs, _ = model.encode_news({k: v.to(device) for k, v in index.features(rows).items()})
        h, c = vecs[: len(hist)][None], vecs[len(hist):]
        user, tokens, w = model.encode_user(h, torch.as_tensor(hist != 0, device=device)[None],
                                            torch.as_tensor(pids, device=device)[None],
                                            torch.as_tensor(pw, device=device)[None])
        scores = (c @ user[0]).float().cpu().numpy()
        share = (w[0][:, None] * (tokens[0] @ c.T)).float().cpu().numpy()  # (tokens, candidates)
    finally:
        model.train(was_training)
    out = []
    n_hist = len(hist)
    for j in np.argsort(-scores, kind="stable"):
        persona = []
        if share.shape[0] > n_hist:  # models without persona tokens explain nothing by entity
            for k in np.flatnonzero(pids):
                e = int(pids[k])
                persona.append({"label": index.entity_vocab.labels[e], "wikidata_id": index.entity_vocab.ids[e],
                                "persona_weight": float(pw[k]), "contribution": float(share[n_hist + k, j])})
            persona.sort(key=lambda p: -p["contribution"])
        out.append({"news_id": candidates[j], "score": float(scores[j]), "persona": persona[:top],
                    "history_contribution": float(share[:n_hist, j].sum())})
    return out


def save_vocabularies(out_dir: Path, vocab: Vocabulary, entity_vocab: EntityVocabulary) -> None:
    """``vocab.json`` (words) and ``entities.json`` (ids, labels, document frequencies) in ``out_dir``."""
    (out_dir / "vocab.json").write_text(json.dumps(vocab.words, ensure_ascii=False))
    (out_dir / "entities.json").write_text(json.dumps(
        {"ids": entity_vocab.ids, "labels": entity_vocab.labels, "doc_freq": entity_vocab.doc_freq,
         "n_docs": entity_vocab.n_docs}, ensure_ascii=False))


def load_vocabularies(model_dir: Path) -> tuple[Vocabulary, EntityVocabulary]:
    """The vocabularies :func:`save_vocabularies` wrote."""
    words = json.loads((model_dir / "vocab.json").read_text())
    ents = json.loads((model_dir / "entities.json").read_text())
    return Vocabulary(words), EntityVocabulary(ents["ids"], ents["labels"], ents["doc_freq"], ents["n_docs"])


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (the word embedding shared by both views counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

