"""Data: label mapping of each task in every file format, sampling, babel, tokenizers, errors."""
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from subnet_ray.data import babel as babel_mod
from subnet_ray.sweep.config import BabelSpec, TaskSpec
from subnet_ray.data.seeding import rng
from subnet_ray.data.examples import Example, load_examples, num_labels, tokenizer_for
from subnet_ray.data.sources import DataError
from subnet_ray.sweep.tasks import TASKS
from subnet_ray.data.tokenization import SPECIAL_TOKENS, encode

# Texts that a careless reader would change: type inference, null markers, quotes, commas, CJK.
TRICKY = ["true", "12", "NA", "", 'say "hi", then go', "猫が座った", "null", "3.5"]


def write(path: Path, rows: list[dict]) -> Path:
    """Writes `rows` to `path` in the format of its extension (tsv unquoted, like the XNLI / PAWS-X releases)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = path.suffix[1:]
    cols = list(rows[0]) if rows else []
    if ext == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    elif ext == "csv":
        import csv

        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
    elif ext == "tsv":
        path.write_text("\n".join(["\t".join(cols)] + ["\t".join(str(r[c]) for c in cols) for r in rows]) + "\n")
    elif ext == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def xnli_rows(n: int, lang: str = "en") -> list[dict]:
    return [{"premise": f"{lang} premise {i}", "hypothesis": f"{lang} hypothesis {i}", "label": i % 3} for i in range(n)]


def task(id: str, source, languages=("en",), sizes=(3, 3, 3), **kw) -> TaskSpec:
    return TaskSpec(id=id, languages=list(languages), source=str(source), train_size=sizes[0], dev_size=sizes[1], test_size=sizes[2], **kw)


# --------------------------------------------------------------------------------------------
# Label mapping of each task


def test_xnli_three_way_becomes_entailment_vs_not(tmp_path):
    write(tmp_path / "en" / "train.jsonl", xnli_rows(9))
    exs = load_examples(task("xnli", tmp_path, sizes=(9, 1, 1)), "train")
    assert len(exs) == 9
    for ex in exs:
        row = int(ex.id.split("/")[-1])
        assert ex.id == f"xnli/en/train/{row}" and ex.language == "en"
        assert (ex.text, ex.text_pair) == (f"en premise {row}", f"en hypothesis {row}")
        assert ex.label == (1 if row % 3 == 0 else 0)  # 0 entailment -> 1; neutral, contradiction -> 0


def test_marc_stars_map_to_polarity_and_three_is_dropped(tmp_path):
    rows = [{"stars": s, "review_title": f"title {i}", "review_body": f"body {i}", "product_category": "x"} for i, s in enumerate([1, 2, 3, 4, 5, 3, 1, 5])]
    write(tmp_path / "de" / "validation.parquet", rows)
    exs = load_examples(task("marc", tmp_path, languages=["de"], sizes=(1, 6, 1)), "dev")
    assert sorted(int(ex.id.split("/")[-1]) for ex in exs) == [0, 1, 3, 4, 6, 7]  # rows 2 and 5 had 3 stars
    for ex in exs:
        row = int(ex.id.split("/")[-1])
        assert ex.label == (0 if rows[row]["stars"] <= 2 else 1)
        assert (ex.text, ex.text_pair) == (f"title {row}", f"body {row}")
    with pytest.raises(DataError, match=r"has only 6 usable rows \(3-star reviews are dropped\), fewer than the 7 asked"):
        load_examples(task("marc", tmp_path, languages=["de"], sizes=(1, 7, 1)), "dev")


@pytest.mark.parametrize("offset", [0, 1])  # SetFit's port: label = stars - 1 (current) or = stars (early revision)
def test_marc_setfit_port_reads_label_as_stars(tmp_path, offset):
    stars = [1, 2, 3, 4, 5, 5, 1]
    write(tmp_path / "fr" / "test.jsonl", [{"id": f"r{i}", "text": f"body {i}", "label": s - 1 + offset} for i, s in enumerate(stars)])
    exs = load_examples(task("marc", tmp_path, languages=["fr"], sizes=(1, 1, 6)), "test")
    got = {int(ex.id.split("/")[-1]): (ex.label, ex.text, ex.text_pair) for ex in exs}
    assert got == {i: (int(s >= 4), f"body {i}", None) for i, s in enumerate(stars) if s != 3}


def test_pawsx_pairs_keep_both_sentences_and_label(tmp_path):
    rows = [{"id": i, "sentence1": f"s1 {i}", "sentence2": f"s2 {i}", "label": int(i % 4 == 0)} for i in range(8)]
    write(tmp_path / "ja" / "train.tsv", rows)
    exs = load_examples(task("pawsx", tmp_path, languages=["ja"], sizes=(8, 1, 1)), "train")
    assert {ex.id: (ex.text, ex.text_pair, ex.label) for ex in exs} == {f"pawsx/ja/train/{i}": (f"s1 {i}", f"s2 {i}", int(i % 4 == 0)) for i in range(8)}


def test_local_task_named_columns_one_file_carves_disjoint_splits(tmp_path):
    rows = [{"sent": f"{lang} s{i}", "y": i % 3, "lang": lang} for lang in ("aa", "bb") for i in range(10)]
    src = write(tmp_path / "all.csv", rows)
    t = task("local", src, languages=["bb", "aa"], sizes=(5, 2, 3), text_column="sent", label_column="y", language_column="lang", num_labels=3)
    splits = {s: load_examples(t, s) for s in ("train", "dev", "test")}
    assert [ex.language for ex in splits["train"]] == ["bb"] * 5 + ["aa"] * 5  # task.languages order
    for lang in ("aa", "bb"):
        texts = [ex.text for s in splits.values() for ex in s if ex.language == lang]
        assert len(texts) == len(set(texts)) == 10  # disjoint, and together the whole language
    for ex in splits["test"]:
        row = int(ex.id.split("/")[-1])
        assert (ex.text, ex.label, ex.text_pair) == (rows[row]["sent"], rows[row]["y"], None)
    assert num_labels(t) == 3 and num_labels(task("xnli", tmp_path)) == 2


def test_local_task_split_files_holding_all_languages(tmp_path):
    for split in ("train", "validation", "test"):
        write(tmp_path / f"{split}.jsonl", [{"text": f"{split} {lang} {i}", "pair": "p", "label": i % 2, "language": lang} for lang in ("x", "y") for i in range(4)])
    t = task("local", tmp_path, languages=["y"], sizes=(4, 4, 4), text_pair_column="pair")
    dev = load_examples(t, "dev")
    assert sorted(ex.text for ex in dev) == [f"validation y {i}" for i in range(4)]
    assert {ex.id for ex in dev} == {f"local/y/dev/{r}" for r in range(4, 8)}  # rows of y in the file
    assert all(ex.text_pair == "p" for ex in dev)


def test_hub_source_goes_through_datasets_with_config_or_lang_in_id(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load(path, name=None, split=None):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict({"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [0, 1], "text": ["t", "u"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    exs = load_examples(TaskSpec(id="pawsx", languages=["ko"], train_size=1, dev_size=2, test_size=1), "dev")
    assert calls == [("google-research-datasets/paws-x", "ko", "validation")]
    assert sorted((ex.text, ex.text_pair, ex.label) for ex in exs) == [("a", "c", 0), ("b", "d", 1)]
    load_examples(TaskSpec(id="marc", languages=["zh"], train_size=1, dev_size=1, test_size=1), "test")
    assert calls[-1] == ("SetFit/amazon_reviews_multi_zh", None, "test")


# --------------------------------------------------------------------------------------------
# File formats, sampling, ids


def test_every_file_format_loads_identically(tmp_path):
    rows = [{"premise": TRICKY[i % len(TRICKY)] + f" {i}" * (i % 2), "hypothesis": TRICKY[(i + 3) % len(TRICKY)], "label": i % 3} for i in range(24)]
    loaded = {}
    for ext in ("jsonl", "csv", "tsv", "parquet"):
        for lang in ("en", "fr"):
            write(tmp_path / ext / lang / f"train.{ext}", rows)
            write(tmp_path / ext / lang / f"{'validation' if ext == 'csv' else 'dev'}.{ext}", rows[:10])
        t = task("xnli", tmp_path / ext, languages=["fr", "en"], sizes=(20, 10, 1))
        loaded[ext] = (load_examples(t, "train"), load_examples(t, "dev"))
    assert loaded["csv"] == loaded["jsonl"] == loaded["tsv"] == loaded["parquet"]
    by_id = {ex.id: ex for ex in loaded["tsv"][0]}
    assert by_id["xnli/fr/train/4"].text == rows[4]["premise"] == 'say "hi", then go'
    assert {t for ex in loaded["csv"][0] for t in (ex.text, ex.text_pair)} >= {"true", "NA", "", "null", "12"}  # not parsed


def test_sampling_is_deterministic_seeded_and_ids_are_stable(tmp_path):
    for lang in ("en", "de"):
        write(tmp_path / lang / "train.jsonl", xnli_rows(200, lang))
    t = lambda seed, n=50: task("xnli", tmp_path, languages=["de", "en"], sizes=(n, 1, 1), data_seed=seed)  # noqa: E731
    a, b, c = load_examples(t(0), "train"), load_examples(t(0), "train"), load_examples(t(1), "train")
    assert a == b
    assert [ex.id for ex in a] != [ex.id for ex in c] and {ex.id for ex in a} != {ex.id for ex in c}
    assert len({ex.id for ex in a}) == 100 and [ex.language for ex in a] == ["de"] * 50 + ["en"] * 50
    # The sample is in permutation order, not a sorted prefix of the file.
    assert [int(ex.id.split("/")[-1]) for ex in a[:50]] != sorted(int(ex.id.split("/")[-1]) for ex in a[:50])
    # An id always names the same source row, whatever the seed or size.
    for ex in a + c + load_examples(t(0, n=200), "train"):
        row = int(ex.id.split("/")[-1])
        assert ex.text == f"{ex.language} premise {row}" and ex.label == int(row % 3 == 0)
    # A larger sample extends the smaller one (same permutation), so sizes can grow without reshuffling.
    assert [ex.id for ex in load_examples(t(0, n=80), "train")][:50] == [ex.id for ex in a[:50]]


# --------------------------------------------------------------------------------------------
# babel


FAMILIES = BabelSpec(vocab_size=200, length=10, families=[["a", "b"], ["c", "d"]], shared_vocab=0.6)


def test_babel_relatedness_follows_families():
    world = babel_mod.make_babel(FAMILIES, ["a", "b", "c", "d", "e"], seed=3)
    words = {lang: set(lex.tolist()) for lang, lex in world.lexicon.items()}
    assert all(len(w) == 200 for w in words.values())  # one distinct word per concept
    assert len(words["a"] & words["b"]) == len(words["c"] & words["d"]) == 120  # 0.6 x 200
    for x, y in [("a", "c"), ("a", "d"), ("b", "c"), ("a", "e"), ("c", "e")]:
        assert not words[x] & words[y]
    # The shared words render the same concepts.
    same = world.lexicon["a"] == world.lexicon["b"]
    assert same.sum() == 120
    assert (world.order["a"] == world.order["b"]).all() and (world.order["c"] == world.order["d"]).all()
    assert not (world.order["a"] == world.order["c"]).all()
    flat = babel_mod.make_babel(FAMILIES.model_copy(update={"reorder": False}), ["a", "c"], seed=3)
    assert (flat.order["a"] == np.arange(10)).all() and (flat.order["c"] == np.arange(10)).all()
    # A language's lexicon does not depend on which other languages the task includes.
    assert (babel_mod.make_babel(FAMILIES, ["b"], seed=3).lexicon["b"] == world.lexicon["b"]).all()


def test_babel_second_family_writes_stem_and_suffix_so_only_the_pair_carries_the_sign():
    world = babel_mod.make_babel(FAMILIES, ["a", "b", "c", "d", "e"], seed=3)
    assert [lang for lang in "abcde" if world.suffixing(lang)] == ["c", "d"]  # the group in the odd place
    assert all(" " not in w for lang in "abe" for w in world.lexicon[lang])
    for lang in "cd":
        groups: dict[str, list[tuple[int, str]]] = {}
        for concept, word in enumerate(world.lexicon[lang].tolist()):
            stem, suffix = word.split(" ")
            groups.setdefault(stem, []).append((concept, suffix))
        assert sum(map(len, groups.values())) == 200 and all(len(g) in (1, 2) for g in groups.values())
        assert sum(len(g) == 1 for g in groups.values()) == 0  # 190 neutral concepts: an even number, no one alone
        for g in groups.values():
            roles = sorted(int(world.roles[c]) for c, _ in g)
            assert roles in ([-1, 1], [0, 0])  # a stem is shared by a positive and a negative concept, or two neutrals
            assert sorted(sfx for _, sfx in g) == ["c-d_a", "c-d_b"]
            if roles == [-1, 1]:
                assert {sfx for c, sfx in g if world.roles[c] == 1} == {"c-d_a"}
        # Neither token alone gives the sign: every polar stem has both, and so does each suffix.
        polar = world.roles != 0
        for sfx in ("c-d_a", "c-d_b"):
            neutral_with = [w for w, r in zip(world.lexicon[lang], world.roles) if r == 0 and w.endswith(sfx)]
            assert len(neutral_with) == 95
        assert len({w.split()[0] for w in world.lexicon[lang][polar]}) == polar.sum() // 2
    flat = babel_mod.make_babel(FAMILIES.model_copy(update={"morphology": "isolating"}), ["c"], seed=3)
    assert not flat.suffixing("c") and all(" " not in w for w in flat.lexicon["c"])


def test_babel_labels_are_the_latent_majority_with_noise_and_text_renders_concepts():
    world = babel_mod.make_babel(FAMILIES, ["a", "c"], seed=0)
    concepts, clean, noisy = babel_mod.latent_sample(world, "train", 4000)
    roles = world.roles[concepts].sum(axis=1)
    assert (clean == (roles > 0)).all() and (roles != 0).all()  # brute-force recount, no ties
    assert 0.45 < clean.mean() < 0.55
    assert 0.035 < (clean != noisy).mean() < 0.065  # label_noise 0.05
    # Decoding a sentence word by word (c writes two tokens a word), undoing the family's order,
    # gives back its concepts.
    inverse = {w: c for c, w in enumerate(world.lexicon["c"].tolist())}
    for sent, row in zip(babel_mod.render(world, "c", concepts[:50]), concepts[:50]):
        tokens = sent.split()
        decoded = np.empty(10, dtype=np.int64)
        decoded[world.order["c"]] = [inverse[" ".join(tokens[i : i + 2])] for i in range(0, 20, 2)]
        assert (decoded == row).all()


def test_babel_loanwords_are_neutral_words_every_language_shares():
    spec = FAMILIES.model_copy(update={"global_vocab": 0.5})
    world = babel_mod.make_babel(spec, ["a", "b", "c", "d", "e"], seed=3)
    stems = {lang: np.array([w.split()[0] for w in lex.tolist()]) for lang, lex in world.lexicon.items()}
    loans = np.flatnonzero(np.char.startswith(stems["a"].astype(str), "g_w"))
    assert len(loans) == 95 and (world.roles[loans] == 0).all()  # half of the 190 neutral concepts
    for lang in "be":  # one token a word: the very same loanwords in every such language
        assert (np.flatnonzero(np.char.startswith(stems[lang].astype(str), "g_w")) == loans).all()
        assert (stems[lang][loans] == stems["a"][loans]).all()
    for lang in "cd":  # stem + suffix: a loan's stem is a loanword; its pair partner (neutral) shares the stem
        assert set(stems[lang][loans]) <= set(stems["a"][loans])
        has_loan_stem = np.char.startswith(stems[lang].astype(str), "g_w")
        assert has_loan_stem[loans].all() and (world.roles[has_loan_stem] == 0).all()
    # Polar words and the other neutral words are as without loanwords.
    plain = babel_mod.make_babel(FAMILIES, ["a", "c"], seed=3)
    rest = np.setdiff1d(np.arange(200), loans)
    assert (plain.lexicon["a"][rest] == world.lexicon["a"][rest]).all()
    assert not {w for w in plain.lexicon["a"].tolist() + plain.lexicon["c"].tolist() if w.startswith("g_w")}


def test_babel_counted_positions_alone_decide_the_label():
    spec = FAMILIES.model_copy(update={"counted": 0.5})
    world = babel_mod.make_babel(spec, ["a", "c"], seed=0)
    concepts, clean, _ = babel_mod.latent_sample(world, "train", 3000)
    roles = world.roles[concepts]
    assert (clean == (roles[:, :5].sum(axis=1) > 0)).all() and (roles[:, :5].sum(axis=1) != 0).all()
    distractors = (roles[:, 5:] != 0).sum(axis=1)
    assert set(distractors.tolist()) == {1, 2}
    # distractors carry no label information: their sign agrees with the label half the time
    agree = (np.sign(roles[:, 5:].sum(axis=1)) == 2 * clean - 1)[distractors == 1]
    assert 0.45 < agree.mean() < 0.55
    # surface slots of the counted positions differ between the families (their own word orders)
    assert set(np.flatnonzero(world.order["a"] < 5)) != set(np.flatnonzero(world.order["c"] < 5))


def test_babel_examples_deterministic_ids_and_seeded():
    t = TaskSpec(id="babel", languages=["d", "a", "b"], train_size=300, dev_size=20, test_size=20, babel=FAMILIES)
    a = load_examples(t, "train")
    assert a == load_examples(t, "train")
    assert [ex.id for ex in a[:2]] == ["babel/d/train/0", "babel/d/train/1"] and len({ex.id for ex in a}) == 900
    assert [ex.language for ex in a] == ["d"] * 300 + ["a"] * 300 + ["b"] * 300
    assert a != load_examples(t.model_copy(update={"data_seed": 1}), "train")
    assert {ex.text for ex in a}.isdisjoint(ex.text for ex in load_examples(t, "test"))
    assert all(ex.text.split()[0].startswith(("d_w", "c-d_s", "a_w", "b_w", "a-b_s")) for ex in a)


def test_babel_is_parallel_every_language_renders_the_same_items():
    t = TaskSpec(id="babel", languages=["d", "a", "c"], train_size=40, dev_size=30, test_size=20, babel=FAMILIES)
    world = babel_mod.make_babel(FAMILIES, ["d", "a", "c"], seed=0)
    for split, n in (("train", 40), ("dev", 30), ("test", 20)):
        concepts, _, noisy = babel_mod.latent_sample(world, split, n)
        got = load_examples(t, split)
        for lang in t.languages:
            texts = babel_mod.render(world, lang, concepts)
            want = [(f"babel/{lang}/{split}/{i}", texts[i], int(noisy[i])) for i in range(n)]
            assert [(ex.id, ex.text, ex.label) for ex in got if ex.language == lang] == want
    # the items of a language do not depend on which other languages the task has
    alone = load_examples(t.model_copy(update={"languages": ["c"]}), "test")
    assert alone == [ex for ex in load_examples(t, "test") if ex.language == "c"]
    assert not np.array_equal(babel_mod.latent_sample(world, "dev", 20)[0], babel_mod.latent_sample(world, "test", 20)[0])


def test_babel_generation_is_fast():
    import time

    t = TaskSpec(id="babel", languages=[f"l{i}" for i in range(5)], train_size=2000, babel=BabelSpec())
    start = time.perf_counter()
    assert len(load_examples(t, "train")) == 10_000
    assert time.perf_counter() - start < 1.0


# --------------------------------------------------------------------------------------------
# Tokenizers and encoding


def test_babel_tokenizer_is_word_level_over_the_vocabulary():
    t = TaskSpec(id="babel", languages=["a", "b", "c"], train_size=50, babel=FAMILIES)
    tok = tokenizer_for(t)
    vocab = tok.get_vocab()
    assert [vocab[s] for s in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert len(vocab) == 5 + len(babel_mod.make_babel(FAMILIES, ["a", "b", "c"], 0).vocabulary())
    assert vocab == tokenizer_for(t).get_vocab()
    for ex in load_examples(t, "train")[::10]:
        ids = tok(ex.text)["input_ids"]
        words = 10 * (2 if ex.language == "c" else 1)  # c writes stem + suffix
        assert ids[0] == 2 and ids[-1] == 3 and 1 not in ids and len(ids) == words + 2  # [CLS] words [SEP], no [UNK]
        assert tok.decode(ids, skip_special_tokens=True) == ex.text


def test_wordpiece_tokenizer_round_trips_pairs_with_token_type_ids(tmp_path):
    rows = [{"sentence1": f"the cat number {i} sat on the mat", "sentence2": f"le chat {i} est sur le tapis", "label": i % 2} for i in range(40)]
    for lang in ("en", "fr"):
        write(tmp_path / lang / "train.jsonl", rows)
    t = task("pawsx", tmp_path, languages=["en", "fr"], sizes=(40, 1, 1))
    tok = tokenizer_for(t, vocab_size=300)
    assert [tok.convert_tokens_to_ids(s) for s in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert tok.get_vocab() == tokenizer_for(t, vocab_size=300).get_vocab()  # deterministic
    exs = load_examples(t, "train")[:4]
    batch = encode(exs, tok, max_length=64)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    for i, ex in enumerate(exs):
        ids, types = batch["input_ids"][i], batch["token_type_ids"][i]
        real = batch["attention_mask"][i].bool()
        seps = (ids == 3).nonzero().flatten().tolist()
        assert ids[0] == 2 and len(seps) == 2 and int(real.sum()) == seps[1] + 1
        assert (types[: seps[0] + 1] == 0).all() and (types[seps[0] + 1 : seps[1] + 1] == 1).all()
        assert tok.decode(ids[1 : seps[0]]) == ex.text and tok.decode(ids[seps[0] + 1 : seps[1]]) == ex.text_pair
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [ex.label for ex in exs]
    # A word outside the vocabulary is spelt in characters, not lost to [UNK].
    chars_only = len(tokenizer_for(t, vocab_size=1))  # specials + every character in both forms
    small = tokenizer_for(t, vocab_size=chars_only + 11)  # + the 11 most frequent words: the, le, cat, ..., tapis
    assert len(small) == chars_only + 11 and "tapis" in small.get_vocab() and "tapisserie" not in small.get_vocab()
    assert "number" in small.get_vocab() and "39" not in small.get_vocab()
    assert small.tokenize("tapisserie") == ["tapis", "##s", "##e", "##r", "##i", "##e"]  # longest match first
    assert small.decode(small("le tapisserie")["input_ids"], skip_special_tokens=True) == "le tapisserie"


def test_encode_pads_to_longest_and_truncates():
    t = TaskSpec(id="babel", languages=["a"], train_size=4, babel=BabelSpec(vocab_size=50, length=6))
    tok = tokenizer_for(t)
    exs = load_examples(t, "train")
    short = Example("x/a/train/9", "a", " ".join(exs[0].text.split()[:2]), None, 1)
    batch = encode([short, exs[1]], tok, max_length=64)
    assert batch["input_ids"].shape == (2, 8) and batch["attention_mask"].sum(1).tolist() == [4, 8]
    assert batch["input_ids"][0, 4:].tolist() == [0] * 4  # [PAD] = 0
    cut = encode(exs, tok, max_length=5)
    assert cut["input_ids"].shape == (4, 5) and (cut["input_ids"][:, -1] == 3).all()
    with pytest.raises(ValueError, match="mixes"):
        encode([short, Example("x/a/train/8", "a", "w", "v", 0)], tok, 8)


def test_pairs_get_a_boundary_only_where_the_tokenizer_has_no_pair_template():
    # a decoder-style tokenizer (no post-processor: Qwen's and GPT-2's join a pair's texts with nothing between)
    # sees premise and hypothesis split by a newline; an encoder tokenizer's own [SEP] template is left as it is
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from subnet_ray.data.tokenization import token_lengths

    vocab = {"<eos>": 0, "\n": 1, "a": 2, "b": 3, "c": 4}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    raw.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("\n", behavior="isolated"), pre_tokenizers.Split(" ", behavior="removed")])
    dec = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", pad_token="<eos>")
    pair = Example("x/a/train/0", "a", "a b", "c", 0)
    assert dec("a b", "c")["input_ids"] == [2, 3, 4]  # glued: the boundary is lost without the separator
    batch = encode([pair], dec, max_length=16)
    assert batch["input_ids"][0].tolist() == [2, 3, 1, 4]
    assert token_lengths([pair], dec, 16) == [4]
    single = encode([Example("x/a/train/1", "a", "a b", None, 0)], dec, max_length=16)
    assert single["input_ids"][0].tolist() == [2, 3]  # single texts unchanged
    t = TaskSpec(id="babel", languages=["a"], train_size=4, babel=BabelSpec(vocab_size=50, length=6))
    tok = tokenizer_for(t)
    ex = load_examples(t, "train")[0]
    paired = Example(ex.id, ex.language, ex.text, ex.text, ex.label)
    assert encode([paired], tok, 64)["input_ids"][0].tolist() == tok(ex.text, ex.text)["input_ids"]  # [CLS] a [SEP] b [SEP]


# --------------------------------------------------------------------------------------------
# Bad input: each error names what is wrong


def bad_cases(tmp: Path):
    write(tmp / "ok" / "en" / "train.jsonl", xnli_rows(5))
    write(tmp / "nocol" / "en" / "train.csv", [{"premise": "p", "hypo": "h", "label": 0}])
    write(tmp / "badlabel" / "en" / "train.jsonl", xnli_rows(4) + [{"premise": "p", "hypothesis": "h", "label": 3}])
    (tmp / "empty" / "en").mkdir(parents=True)
    (tmp / "empty" / "en" / "train.jsonl").write_text("")
    write(tmp / "local.csv", [{"text": "t", "label": 0, "language": "en"}])
    write(tmp / "twice" / "en" / "dev.jsonl", xnli_rows(2))
    write(tmp / "twice" / "en" / "validation.csv", xnli_rows(2))
    return [
        (TaskSpec.model_construct(id="snli", languages=["en"], source=None), "train", "unknown task 'snli'"),
        (task("xnli", tmp / "ok"), "validation", "unknown split 'validation'"),
        # the sweep config rejects this first (tests/test_cli.py); the loader still guards itself
        (TaskSpec.model_construct(**task("xnli", tmp / "ok").model_dump() | {"languages": ["en", "xx"]}), "train",
         "task 'xnli': unknown language 'xx'; xnli offers ar"),
        (TaskSpec.model_construct(**task("marc", tmp / "ok").model_dump() | {"languages": ["ko"]}), "train", "unknown language 'ko'"),
        (task("xnli", tmp / "ok"), "dev", f"split 'dev': no file {tmp}/ok/en/dev or validation"),
        (task("xnli", tmp / "ok", languages=["de"]), "train", f"language 'de', split 'train': no folder {tmp}/ok/de"),
        (task("xnli", tmp / "twice"), "dev", f"{tmp}/twice/en: several files for split 'dev': dev.jsonl, validation.csv; keep one"),
        (task("xnli", tmp / "nowhere"), "train", f"source {tmp}/nowhere does not exist"),
        (task("xnli", tmp / "nocol"), "train", f"{tmp}/nocol/en/train.csv has no column 'hypothesis' \\(columns: premise, hypo, label\\)"),
        (task("xnli", tmp / "badlabel"), "train", f"{tmp}/badlabel/en/train.jsonl column 'label' has label 3 at row 4; expected an integer in \\[0, 2\\]"),
        (task("xnli", tmp / "empty"), "train", f"language 'en', split 'train': {tmp}/empty/en/train.jsonl has no rows \\(empty language\\)"),
        (task("xnli", tmp / "ok", sizes=(6, 1, 1)), "train", f"split 'train': {tmp}/ok/en/train.jsonl has only 5 rows usable in every language \\(en\\), fewer than the 6 asked"),
        (task("local", tmp / "local.csv", languages=["fr"]), "train", "column 'language' has no rows of language 'fr' \\(languages present: en\\)"),
        (task("local", tmp / "local.csv", sizes=(1, 1, 1)), "dev", "has only 1 rows, fewer than the 2 asked \\(train \\+ dev \\+ test up to dev"),
        (task("local", tmp / "local.csv", label_column="y"), "train", "local.csv has no column 'y'"),
        (TaskSpec(id="local", languages=["en"]), "train", "the local task needs `source`"),
        (TaskSpec(id="babel", languages=["a", "b"], babel=BabelSpec(families=[["a", "b"], ["b"]])), "train", "language 'b' is in two families"),
    ]


def test_bad_input_errors_name_what_is_wrong(tmp_path):
    for spec, split, message in bad_cases(tmp_path):
        with pytest.raises(DataError, match=message):
            load_examples(spec, split)
    assert issubclass(DataError, ValueError)
    assert TASKS["pawsx"].languages == ("de", "en", "es", "fr", "ja", "ko", "zh") and len(TASKS["xnli"].languages) == 15


# --------------------------------------------------------------------------------------------
# Parallel sampling (paper 4.3: every language gets the same items)


def pawsx_rows(ids, lang):
    return [{"id": i, "sentence1": f"{lang} s1 of {i}", "sentence2": f"{lang} s2 of {i}", "label": i % 2} for i in ids]


def _items(exs, lang, source_item):
    return [source_item(ex) for ex in exs if ex.language == lang]


def test_pawsx_languages_sample_the_same_items_aligned_by_id(tmp_path):
    # Each language's files list the items in its own order, as translated releases may:
    # alignment must follow the `id` column, not the row position.
    ids = list(range(100, 140))
    for split, ext in (("train", "tsv"), ("dev", "jsonl"), ("test", "parquet")):
        for k, lang in enumerate(("de", "en", "fr")):
            order = np.random.default_rng(k).permutation(ids).tolist()
            write(tmp_path / lang / f"{split}.{ext}", pawsx_rows(order, lang))
    spec = task("pawsx", tmp_path, languages=["de", "en", "fr"], sizes=(12, 8, 6))
    for split, n in (("train", 12), ("dev", 8), ("test", 6)):
        exs = load_examples(spec, split)
        assert len(exs) == 3 * n
        items = {lang: _items(exs, lang, lambda ex: ex.text.split(" of ")[1]) for lang in ("de", "en", "fr")}
        assert items["de"] == items["en"] == items["fr"]  # the same items, in the same order
        assert len(set(items["de"])) == n
        assert all(ex.label == int(ex.text.split(" of ")[1]) % 2 for ex in exs)
        assert len({ex.id for ex in exs}) == 3 * n  # ids stay unique ...
    assert [ex.id for ex in load_examples(spec, "train")] == [ex.id for ex in load_examples(spec, "train")]  # ... and stable
    other = load_examples(spec.model_copy(update={"data_seed": 1}), "train")
    assert _items(other, "de", lambda ex: ex.text) != _items(load_examples(spec, "train"), "de", lambda ex: ex.text)


def test_xnli_languages_sample_the_same_rows(tmp_path):
    for lang in ("ar", "en", "sw"):
        write(tmp_path / lang / "test.jsonl", xnli_rows(30, lang))
    exs = load_examples(task("xnli", tmp_path, languages=["ar", "en", "sw"], sizes=(1, 1, 10)), "test")
    rows = {lang: [int(ex.id.split("/")[-1]) for ex in exs if ex.language == lang] for lang in ("ar", "en", "sw")}
    assert rows["ar"] == rows["en"] == rows["sw"] and len(set(rows["en"])) == 10
    assert all(ex.text == f"{ex.language} premise {ex.id.split('/')[-1]}" for ex in exs)


def test_local_group_column_makes_sampling_parallel(tmp_path):
    rows = [{"text": f"{lang} item {g}", "label": g % 2, "language": lang, "item": f"g{g}"} for lang in ("aa", "bb") for g in range(20)]
    np.random.default_rng(0).shuffle(rows)
    write(tmp_path / "all.csv", rows)
    spec = task("local", tmp_path / "all.csv", languages=["aa", "bb"], sizes=(6, 4, 4), group_column="item")
    seen = set()
    for split in ("train", "dev", "test"):
        exs = load_examples(spec, split)
        items = {lang: _items(exs, lang, lambda ex: ex.text.split(" item ")[1]) for lang in ("aa", "bb")}
        assert items["aa"] == items["bb"]
        assert not seen & set(items["aa"])  # train, dev and test carved disjointly from one permutation
        seen |= set(items["aa"])
    # without the group column the same file is sampled per language: items differ
    plain = load_examples(spec.model_copy(update={"group_column": None}), "train")
    assert _items(plain, "aa", lambda ex: ex.text.split(" item ")[1]) != _items(plain, "bb", lambda ex: ex.text.split(" item ")[1])


@pytest.mark.parametrize("case", ["other ids", "other row counts", "repeated id", "id column missing in one language"])
def test_misaligned_parallel_sources_are_refused_naming_languages(tmp_path, case):
    if case == "other row counts":
        write(tmp_path / "de" / "train.jsonl", xnli_rows(8, "de"))
        write(tmp_path / "fr" / "train.jsonl", xnli_rows(9, "fr"))
        spec, match = task("xnli", tmp_path, languages=["de", "fr"]), "languages 'de' \\(8 rows.*and 'fr' \\(9 rows.*not row-aligned"
    else:
        write(tmp_path / "de" / "train.jsonl", pawsx_rows(range(10), "de"))
        fr = {"other ids": pawsx_rows(range(1, 11), "fr"), "repeated id": pawsx_rows([0, 1, 2, 3, 4, 5, 6, 7, 8, 8], "fr"),
              "id column missing in one language": [{k: v for k, v in r.items() if k != "id"} for r in pawsx_rows(range(10), "fr")]}[case]
        write(tmp_path / "fr" / "train.jsonl", fr)
        match = {"other ids": "languages 'de' and 'fr' do not hold the same items \\(2 differ",
                 "repeated id": "language 'fr', split 'train'.*column 'id' repeats item '8'",
                 "id column missing in one language": "language\\(s\\) fr have no column 'id'"}[case]
        spec = task("pawsx", tmp_path, languages=["de", "fr"])
    with pytest.raises(DataError, match=match):
        load_examples(spec, "train")


def test_marc_is_sampled_per_language_as_before(tmp_path):
    # MARC is not parallel: each language keeps its own permutation seeded by (data_seed, language, split).
    for lang in ("de", "fr"):
        write(tmp_path / lang / "train.jsonl",
              [{"stars": 1 + (i % 5), "review_title": f"{lang} t{i}", "review_body": f"b{i}"} for i in range(40)])
    exs = load_examples(task("marc", tmp_path, languages=["de", "fr"], sizes=(10, 1, 1)), "train")
    for lang in ("de", "fr"):
        usable = np.asarray([i for i in range(40) if 1 + (i % 5) != 3])
        expected = rng(0, lang, "train").permutation(usable)[:10].tolist()
        assert [int(ex.id.split("/")[-1]) for ex in exs if ex.language == lang] == expected
    assert [ex.id.split("/")[-1] for ex in exs if ex.language == "de"] != [ex.id.split("/")[-1] for ex in exs if ex.language == "fr"]


def test_a_new_data_set_is_one_registry_record_plus_its_files(tmp_path):
    from subnet_ray.sweep.config import SweepSpec
    from subnet_ray.sweep.tasks import TaskRecord, register

    def convert(rows, task):  # stars 1-3 -> 0, 4-5 -> 1
        rows.require("sentence", "stars", "item")
        return "sentence", None, (rows.labels("stars", range(1, 6)) >= 4).astype(np.int64)

    register(TaskRecord("toyset", convert, languages=("aa", "bb"), text_columns=("sentence",), parallel_by="item"))
    try:
        for lang in ("aa", "bb"):
            for split in ("train", "dev", "test"):
                write(tmp_path / lang / f"{split}.jsonl",
                      [{"item": f"i{j}", "sentence": f"{lang} {split} {j}", "stars": 1 + j % 5} for j in range(12)])
        # validates as a sweep task; an unknown language is refused by the record's list
        spec = SweepSpec.model_validate({"name": "t", "tasks": [{"id": "toyset", "languages": ["aa", "bb"], "source": str(tmp_path),
                                                                   "train_size": 5, "dev_size": 2, "test_size": 2}]})
        with pytest.raises(ValueError, match="no language\\(s\\) \\['cc'\\]"):
            SweepSpec.model_validate({"name": "t", "tasks": [{"id": "toyset", "languages": ["aa", "cc"]}]})
        exs = load_examples(spec.tasks[0], "train")
        assert len(exs) == 10 and num_labels(spec.tasks[0]) == 2
        items = {lang: [ex.text.split()[-1] for ex in exs if ex.language == lang] for lang in ("aa", "bb")}
        assert items["aa"] == items["bb"]  # parallel by its item column
        assert all(ex.label == int(1 + int(ex.text.split()[-1]) % 5 >= 4) for ex in exs)
        assert tokenizer_for(spec.tasks[0]).tokenize("bb train") == ["bb", "train"]  # its words, from its files
    finally:
        TASKS.pop("toyset")
    with pytest.raises(ValueError, match="unknown task 'toyset'"):
        SweepSpec.model_validate({"name": "t", "tasks": [{"id": "toyset", "languages": ["aa"]}]})
