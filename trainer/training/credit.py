"""Which words the votes credit, and which tokens of an answer they cover (``--credit-weight``).

A preference a person holds about wording ("explain why", "give numbers", "no
jargon") or form ("ask me a question", "use lists"; each punctuation mark is a word
here) shows in the votes as words that turn up in the chosen answer and not in the
rejected one far more often than chance allows. DPO's implicit reward is a sum over an
answer's tokens (paper Eq. 5): from a handful of decisive votes, the few tokens that
decided them are one or two of ~100 per answer, their gradient is drowned by the
answers' other differences, and what the policy learns instead is what every chosen
answer shares, often its length.

The test, per word: over the training votes whose two sides differ in it (it is on
exactly one of them; a side is the answers a vote put above the others, or below them,
``vote_sides``), count the votes where it is on the chosen side. If the word had
nothing to do with the vote, a side of n words would hold it with probability
1 - (1 - f)^n, so given that exactly one side holds it, it is on the chosen side with
probability q_i = P_c (1 - P_r) / (P_c (1 - P_r) + P_r (1 - P_c)): a longer answer
holds more words, a common word almost surely. The rate f is fitted to the share of all
sides that hold the word (``presence_rates``), not taken from its count: a word that
comes in clumps (the numbers of a numbered list) is in fewer answers than its count
suggests, and a count-based rate would expect it in every short answer. The count then
follows a Poisson-binomial law; the word is credited when its two-sided tail probability
is below ``alpha / m``, with m the number of words that could reach that level at all
(Bonferroni). Length alone thus credits nothing: the words of a longer chosen answer are
expected on its side.

A preference about a kind of word ("positive words", "numbers", "hedges") shows in many
different words, each too rare to pass the test alone. So each word is also tested
together with its neighbours, the words of the votes whose input embeddings (the
model's own, ``embedding_vectors``) have a cosine similarity of at least
``--credit-similarity`` with its own (``word_groups``): a group is on a side when any
of its words is, and is tested like one word. In a credited group, the words that lean
the group's way more than their own rates predict are credited (``Credit.group``).
When the groups that could pass outnumber the words, Bonferroni runs over the words at
alpha / 2 and over the groups at alpha / 2 (``family_levels``), else over all together:
a word's level never falls below alpha / (2 x the words that could pass).

In a pair that holds a credited word, a round then scores the tokens inside credited
words in full and the pair's other tokens ``1 / (1 + weight)`` times in each answer's
log-ratio (``focused``, used by ``trainer/training/rounds.py``): token-weighted DPO, in
the family of TIS-DPO (Liu et al. 2024, arXiv 2410.04350) and SePO (Yang et al. 2024,
arXiv 2408.13518), with the weights taken from the votes' own evidence. (With ``--loss ipo``
the weighted sums are still divided by the answer's token count.) The pairs that hold no
credited word apart count ``--uncredited-weight`` times in such a round's loss, and sit
it out at the default 0 (``focus_round``). The held-out gate judges the held-out votes
on the reward the round trains: marked with the round's credited words, each pair with
credited tokens scored on the focused reward, and at weight 0 only the pairs that hold a
credited word apart (``trainer/training/heldout.py``; at a weight between 0 and 1 the
others count in full in its sign test): the whole answers' reward judges what focused
training never aimed at (it fell on held-out votes in rounds whose drafts had learnt).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from trainer.training.span import Decode

# A word: letters/digits with inner apostrophes, or one punctuation mark or symbol
WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*|[^\w\s]")

Vectors = Callable[[Sequence[str]], np.ndarray]  # words -> (n, d) float vectors


@dataclass(frozen=True)
class Credit:
    word: str
    favoured: bool  # True: on the chosen side more than chance allows; False: rejected
    chosen_only: int  # pairs where the word is in the chosen answer only
    rejected_only: int  # pairs where it is in the rejected answer only
    p_value: float  # two-sided Poisson-binomial tail (of its group's test, if grouped)
    group: tuple[str, ...] = ()  # the words tested together when it came from a group


def words(text: str) -> list[str]:
    """The words of ``text``, lower-cased, in order; each punctuation mark or symbol is a
    word of its own ("?", "(", "-", "*"), so a preference about form (ask a question,
    write a list) is tested like one about wording."""
    return [w.lower() for w in WORD.findall(text)]


def poisson_binomial_tail(probs: Sequence[float], k: int) -> float:
    """P(X >= k) for X the number of successes of independent Bernoulli(probs[i])."""
    dist = [1.0]  # dist[j] = P(j successes so far)
    for q in probs:
        nxt = [0.0] * (len(dist) + 1)
        for j, pj in enumerate(dist):
            nxt[j] += pj * (1 - q)
            nxt[j + 1] += pj * q
        dist = nxt
    return min(1.0, sum(dist[max(k, 0):]))


def presence_odds(freq: float, n_chosen: int, n_rejected: int) -> float:
    """The chance that a word of frequency ``freq`` is on the chosen side of a pair whose
    answers have ``n_chosen`` and ``n_rejected`` words, given that exactly one holds it
    and it has nothing to do with the vote."""
    p_c = 1 - (1 - freq) ** max(n_chosen, 1)
    p_r = 1 - (1 - freq) ** max(n_rejected, 1)
    one_side = p_c * (1 - p_r) + p_r * (1 - p_c)
    return p_c * (1 - p_r) / one_side if one_side > 0 else 0.5


def presence_rates(shares: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per unit, the rate f at which a side of n words holds it with probability
    1 - (1 - f)^n, fitted so that the mean of that over the sides' ``lengths`` equals the
    share of sides that hold it (``shares``, (U,)); (U,) by bisection."""
    lo, hi = np.zeros(len(shares)), np.ones(len(shares))
    n = np.maximum(lengths, 1)[None, :]  # (1, S)
    for _ in range(50):
        mid = (lo + hi) / 2
        low = (1 - (1 - mid[:, None]) ** n).mean(axis=1) < shares  # (U,)
        lo, hi = np.where(low, mid, lo), np.where(low, hi, mid)
    return (lo + hi) / 2


def embedding_vectors(encode: Callable[[str], Sequence[int]], weight) -> Vectors:
    """Each word's vector: the mean of the model's input-embedding rows (``weight``, a
    (V, d) tensor on any device) of its tokens as it reads inside a sentence,
    ``encode(" " + word)``."""
    import torch

    def vectors(ws: Sequence[str]) -> np.ndarray:
        with torch.no_grad():
            rows = [weight[list(encode(" " + w)) or [0]].float().mean(0) for w in ws]
            return torch.stack(rows).cpu().numpy()  # (n, d)
    return vectors


def model_vectors(tokenizer, model) -> Vectors:
    """``embedding_vectors`` of a transformers tokenizer and (peft) model."""
    return embedding_vectors(lambda t: tokenizer(t, add_special_tokens=False)["input_ids"],
                             model.get_input_embeddings().weight)


def word_groups(ws: Sequence[str], vectors: np.ndarray, similarity: float
                ) -> list[frozenset[str]]:
    """Each word of ``ws`` with the words whose vectors ((n, d), centred on their mean)
    have a cosine similarity of at least ``similarity`` with its own; groups of one
    word and repeats left out."""
    v = vectors - vectors.mean(axis=0)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    close = (v @ v.T) >= similarity  # (n, n)
    groups = {frozenset(ws[j] for j in np.flatnonzero(row)) | {ws[i]}
              for i, row in enumerate(close)}
    return sorted((g for g in groups if len(g) > 1), key=sorted)


def family_levels(tests: Sequence[tuple[frozenset, object]], alpha: float, split: bool
                  ) -> tuple[float, float]:
    """(per-test level of a word, of a group): Bonferroni over all testable units at
    ``alpha``; with ``split``, when the groups outnumber the words, over the words at
    alpha / 2 and over the groups at alpha / 2, so a word's level never falls below
    the common one however many groups there are. The choice depends only on how many
    units are testable, not on their outcomes, so the family-wise error rate stays at
    most alpha."""
    n_groups = sum(len(u) > 1 for u, _ in tests)
    n_words = len(tests) - n_groups
    if not split or n_groups <= n_words or not n_words:
        return alpha / max(len(tests), 1), alpha / max(len(tests), 1)
    return alpha / 2 / n_words, alpha / 2 / n_groups


def credited_words(pairs: Sequence[tuple[str, str]], alpha: float = 0.05,
                   vectors: Vectors | None = None, similarity: float = 0.0,
                   split: bool = True) -> list[Credit]:
    """The words the (chosen, rejected) text ``pairs`` credit, strongest first; give one
    pair per vote (the pairs one vote implies share answers, and are not independent):
    an A/B pair, or the two sides of a vote (``vote_sides``).

    A word present in both answers of a pair, or in neither, says nothing there. With
    ``vectors`` and a ``similarity`` above 0 the groups of ``word_groups`` are tested too.
    The family-wise error rate over all words and groups is at most ``alpha`` (two-sided
    tests, Bonferroni over those that could reach ``alpha`` with every pair on one side,
    words and groups at alpha / 2 each with ``split``, ``family_levels``);
    ``Credit.p_value`` is the two-sided p before that correction."""
    listed = [(words(c), words(r)) for c, r in pairs]
    sides = [(set(wc), set(wr)) for wc, wr in listed]
    lengths = np.array([len(w) for wc, wr in listed for w in (wc, wr)], dtype=float)
    vocab = sorted(set().union(*(c | r for c, r in sides))) if sides else []
    units = [frozenset([w]) for w in vocab]
    if vectors is not None and similarity > 0 and len(vocab) > 1:
        units += word_groups(vocab, vectors(vocab), similarity)
    held = {u: [(bool(u & c), bool(u & r)) for c, r in sides] for u in units}
    shares = np.array([sum(a + b for a, b in h) for h in held.values()]) / max(len(lengths), 1)
    rates = dict(zip(units, presence_rates(shares, lengths).tolist()))

    def seen(unit, h) -> list[tuple[bool, float]]:  # (on chosen side, q_i) where apart
        return [(a, presence_odds(rates[unit], len(wc), len(wr)))
                for (a, b), (wc, wr) in zip(h, listed) if a != b]

    tests = []
    for u, h in held.items():
        s = seen(u, h)
        qs = [q for _, q in s]
        best = min(math.prod(qs), math.prod(1 - q for q in qs)) if qs else 1.0
        if 2 * best < alpha:  # testable: it could be significant
            tests.append((u, s))
    found: dict[str, Credit] = {}
    levels = family_levels(tests, alpha, split)
    for u, s in tests:
        qs, up = [q for _, q in s], sum(a for a, _ in s)
        p_up = poisson_binomial_tail(qs, up)
        p_down = poisson_binomial_tail([1 - q for q in qs], len(qs) - up)
        p = min(1.0, 2 * min(p_up, p_down))
        if p >= levels[len(u) > 1]:
            continue
        favoured = p_up < p_down
        for w in sorted(u):
            own = s if len(u) == 1 else seen(frozenset([w]), held[frozenset([w])])
            on_chosen = sum(a for a, _ in own)
            lean = on_chosen - sum(q for _, q in own)  # beyond what its rate predicts
            if len(u) > 1 and (lean <= 0 if favoured else lean >= 0):
                continue
            if w not in found or p < found[w].p_value:
                found[w] = Credit(w, favoured, on_chosen, len(own) - on_chosen, p,
                                  tuple(sorted(u)) if len(u) > 1 else ())
    return sorted(found.values(), key=lambda c: (c.p_value, c.word))


def vote_of(row: dict) -> object:
    """The vote a training row comes from: its rank set, else its pair, else itself."""
    return row.get("group") or row.get("pair_id") or row["key"]


def vote_sides(rows: Sequence[dict]) -> list[tuple[str, str]]:
    """One (chosen side, rejected side) text pair per vote, from the rows it implies.

    A vote's chosen side holds the answers it put above another and below none, its
    rejected side those it put below another and above none: an A/B vote's two answers,
    a written answer against the answers it beats, a rank vote's best against the other
    answers of its set (best marked alone), all but the worst against it (worst alone),
    or its best against its worst (both marked: the middle ones are on neither side).
    A pair with both an A/B vote and a written better answer W gives (W, the A/B loser):
    the A/B winner is beaten by W and beats the loser, so it is on neither side.
    Each side's answers are joined with newlines, so a word is on a side when any of
    its answers holds it, and the side's chance of holding it by luck grows with all of
    its words (``presence_odds``): a word in the best of four answers and in none of the
    other three is about twice the evidence of a word in one answer of an A/B pair."""
    votes: dict[object, tuple[list[str], list[str]]] = {}
    for r in rows:
        if r["chosen"] == r["rejected"]:  # two answers that read the same: no evidence
            continue
        up, down = votes.setdefault(vote_of(r), ([], []))
        for side, text in ((up, r["chosen"]), (down, r["rejected"])):
            if text not in side:
                side.append(text)
    out = []
    for up, down in votes.values():
        chosen = [t for t in up if t not in down]
        rejected = [t for t in down if t not in up]
        if chosen and rejected:
            out.append(("\n".join(chosen), "\n".join(rejected)))
    return out


def token_mask(ids: Sequence[int], credited: set[str], decode: Decode) -> tuple[float, ...]:
    """1.0 for each of an answer's tokens that lies inside a credited word, else 0.0.

    Token i covers the characters that ``decode(ids[:i + 1])`` adds to
    ``decode(ids[:i])``, so the words are found in the same text the tokens decode to
    (a word split over several tokens marks all of them; a token whose prefix decodes
    shorter than the one before, as a half of a multi-byte character can, covers
    nothing)."""
    if not credited or not ids or not credited & set(words(decode(ids))):
        return (0.0,) * len(ids)
    ends, text = [], ""
    for i in range(len(ids)):
        text = decode(ids[:i + 1])
        ends.append(len(text))
    spans = [m.span() for m in WORD.finditer(text) if m.group().lower() in credited]
    out, start = [], 0
    for end in ends:
        end = max(end, start)
        out.append(1.0 if any(a < end and b > start for a, b in spans) else 0.0)
        start = end
    return tuple(out)


def mark_credit(examples: list, credited: set[str], decode: Decode) -> None:
    """Record on each example the credited words that are in one of its answers and not
    in the other (``apart``: a word both answers hold does not tell them apart), and the
    credited-token mask of each answer kept as sampled ids (answers scored as text get
    none, and are scored as usual)."""
    for e in examples:
        seqs = (e.chosen, e.rejected)
        held = [set(words(decode(s) if isinstance(s, tuple) else s)) for s in seqs]
        e.apart = frozenset(credited & (held[0] ^ held[1]))
        for seq in seqs:
            if isinstance(seq, tuple):
                e.credit[seq] = token_mask(seq, e.apart, decode)


def focus_round(train: list, held: list, weight: float, least: int
                ) -> tuple[list, list, int]:
    """(training pairs, held-out pairs, training pairs without a credited word) of a round
    once ``mark_credit`` has run on both (``--uncredited-weight``). When at least
    ``least`` training pairs hold a credited word apart, each training pair that holds
    none gets ``weight`` in the loss; at 0 it is left out, and so is each held-out pair
    that holds none: the gate then judges the pairs the round trained on. With fewer,
    every pair is kept as it is.

    Such a pair's vote is explained by something the test did not find (a word too rare
    to credit, or no word at all), and scored on its whole answers it teaches whatever
    the chosen answers share: when the credited pairs' chosen answers run longer, that
    is length, and the policy learns to ramble instead of the words. (A pair holding a
    credited word in a text-only answer, which has no token marks, is kept and trained
    on its whole answers.)"""
    if sum(bool(e.apart) for e in train) < max(least, 1):
        return train, held, 0
    plain = [e for e in train if not e.apart]
    if weight == 0:
        return [e for e in train if e.apart], [e for e in held if e.apart], len(plain)
    for e in plain:
        e.weight = weight
    return train, held, len(plain)


def credit_weights(response_mask, batch: list, texts: list):
    """(2B, T) float: 1.0 at the response positions of the credited tokens of each row
    (``texts`` are the batch's chosen then rejected answers); a response cut by
    ``max_length`` keeps the marks of the tokens it kept."""
    import torch

    weights = torch.zeros(response_mask.shape, dtype=torch.float32,
                          device=response_mask.device)  # (2B, T)
    for i, (t, e) in enumerate(zip(texts, batch * 2)):
        marks = e.credit.get(t)
        if not marks or not any(marks):
            continue
        pos = response_mask[i].nonzero(as_tuple=True)[0]  # (n_i,)
        n = min(len(pos), len(marks))
        weights[i, pos[:n]] = torch.tensor(marks[:n], dtype=torch.float32,
                                           device=response_mask.device)
    return weights


def pair_has_credit(weights):
    """(2B,) bool from ``credit_weights``' (2B, T): whether a row's PAIR (row i and row
    i +- B) has a marked token in either answer (``mark_credit`` marks only the words one
    answer holds and the other does not)."""
    import torch

    has = weights.sum(-1) > 0  # (2B,)
    b = has.shape[0] // 2
    either = has[:b] | has[b:]  # (B,)
    return torch.cat([either, either])


def focused(total, credited, has_credit, weight: float):
    """Each answer's summed log-prob (or reference log-prob) as a round scores it,
    ``--credit-weight γ``: in a pair holding a credited token, the credited tokens count
    in full and every other token 1 / (1 + γ); other pairs are unchanged. (2B,) each.

    The implicit reward of DPO's Eq. 5 then rests on the tokens the votes' evidence points
    to, at the same β per credited token, instead of on everything else the two answers
    also differ in (their lengths, above all); with γ large only those tokens count."""
    import torch

    return torch.where(has_credit, credited + (total - credited) / (1.0 + weight), total)
