"""The ``multissl`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from pathlib import Path

USAGE_ERRORS = (ValueError, FileNotFoundError, FileExistsError, KeyError)
STOP_ERRORS = {"multissl.train": ("CollapseError", "NonFiniteError", "Preempted"),
               "multissl.checkpoints": ("CheckpointError",)}


def _pretrain(args: argparse.Namespace, rest: list[str]) -> None:
    from multissl import api
    from multissl.recipe import RecipeError, parse_overrides

    overrides = parse_overrides(rest)
    if args.help:  # the recipe's keys are read first: a bad recipe or key is the one-line error alone
        keys = api.recipe_keys(args.recipe, **overrides) if args.recipe else ""
        print(args.parser.format_help() + ("\n" + keys if keys else ""), end="")
        return
    if not args.recipe:
        raise RecipeError("pretrain needs a recipe: a YAML file or a shipped recipe's name (multissl recipes)")
    run_dir = api.pretrain(args.recipe, resume=args.resume, overwrite=args.overwrite, **overrides)
    print(f"run saved in {run_dir}")


def _recipes(args: argparse.Namespace, rest: list[str]) -> None:
    from multissl import api

    if args.recipes_command == "show":
        print(api.show_recipe(args.name), end="")
        return
    found = api.recipes()
    rows = [("name", "modality", "method", "description")] + [(r.name, r.modality, r.method, r.description)
                                                                for r in found]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)) + "  " + row[3])
    print("\nmultissl recipes show NAME prints one (to copy and edit); multissl pretrain NAME --help lists its keys.")


def _export(args: argparse.Namespace, rest: list[str]) -> None:
    from multissl import api

    out = api.export(args.run_dir, args.out_dir, which=args.which, arch=args.arch, overwrite=args.overwrite)
    print(f"exported {args.which or 'the evaluated encoder'} to {out}")


def _push(args: argparse.Namespace, rest: list[str]) -> None:
    from multissl import api

    url = api.push(args.model_dir, args.repo_id, token=args.token, private=args.private, endpoint=args.endpoint)
    print(f"pushed to {url}")


def _probe(args: argparse.Namespace, rest: list[str]) -> None:
    from multissl import api
    from multissl.probe import format_table
    from multissl.protocols import FineTuneConfig

    try:
        fractions = tuple(float(f) for f in args.label_fractions.split(","))
    except ValueError:
        raise ValueError(f"--label-fractions {args.label_fractions}: expected numbers separated by commas, "
                         "e.g. 0.01,0.1") from None
    finetune = FineTuneConfig(epochs=args.finetune_epochs, lr=args.finetune_lr, batch_size=args.finetune_batch_size)
    results = api.probe(args.model_dir, args.data, label_column=args.label_column, input_column=args.input_column,
                        folds=args.folds, seeds=args.seeds, seed=args.seed, baseline=args.baseline,
                        max_samples=args.max_samples, pool=args.pool, k=args.k, sts=args.sts,
                        protocols=args.protocols, temperature=args.temperature, label_fractions=fractions,
                        finetune=finetune)
    print(format_table(results))


def _views(args: argparse.Namespace, rest: list[str]) -> None:
    from multissl.views_picture import views_picture

    print(f"views of {args.n} examples drawn in {views_picture(args.recipe, rest, args.out, args.n)}")


def _audio_scan(args: argparse.Namespace, rest: list[str]) -> None:
    from multissl.modalities.audio.data import find_audio, scan, scan_report
    from multissl.modalities.audio.model import AudioConfig

    cfg = AudioConfig(sample_rate=args.sample_rate, min_samples=args.min_samples)
    good, bad = scan(find_audio(",".join(args.paths), args.audio_column), cfg)
    print(scan_report(good, bad, cfg.sample_rate))


def _tokenizer(args: argparse.Namespace, rest: list[str]) -> None:
    from multissl.tokenizer import train_tokenizer

    tok = train_tokenizer(args.files, args.out, kind=args.kind, vocab_size=args.vocab_size,
                          min_frequency=args.min_frequency, overwrite=args.overwrite)
    print(f"{args.kind} tokenizer with {len(tok)} tokens saved in {args.out}")


def _word2vec(args: argparse.Namespace, rest: list[str]) -> None:
    from multissl.word2vec.corpus import Corpus
    from multissl.word2vec.io import save_vectors
    from multissl.word2vec.train import Word2VecConfig, train_word2vec

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise FileExistsError(f"{out}: output folder exists and is not empty (pass --overwrite)")
    cfg = Word2VecConfig(sg=args.sg, dim=args.dim, window=args.window, negative=args.negative,
                         min_count=args.min_count, max_vocab_size=args.max_vocab_size, sample=args.sample,
                         alpha=args.alpha, min_alpha=args.min_alpha, epochs=args.epochs, seed=args.seed,
                         workers=args.workers)
    corpus = Corpus(args.corpus, text_column=args.text_column, tokenizer=args.tokenizer)
    if args.device == "cuda":
        from multissl.word2vec.gpu import train_word2vec_gpu

        result = train_word2vec_gpu(corpus.sentences, cfg)
    else:
        result = train_word2vec(corpus, cfg)
    log = logging.getLogger("multissl.word2vec")
    if corpus.stats.get("invalid_utf8"):
        log.warning("%d lines with invalid UTF-8 bytes were read with replacement characters",
                    corpus.stats["invalid_utf8"])
    if corpus.stats.get("bad_rows"):
        log.warning("%d rows that were not JSON objects with a text value were skipped", corpus.stats["bad_rows"])
    save_vectors(result, out, overwrite=args.overwrite)
    s = result.stats
    print(f"{len(result.vocab)} vectors of size {cfg.dim} in {out}: {s['words_per_second']:,.0f} words/s, "
          f"loss per pair {s['loss_per_pair']:.4f}")


def _word2vec_eval(args: argparse.Namespace, rest: list[str]) -> None:
    from multissl.word2vec.evaluate import evaluate_analogies, evaluate_pairs
    from multissl.word2vec.io import load_vectors

    if not args.pairs and not args.analogies:
        raise ValueError("pass --pairs FILE and/or --analogies FILE")
    vocab, vectors = load_vectors(args.vectors)
    for path in args.pairs or []:
        r = evaluate_pairs(vocab.words, vectors, path)
        print(f"{path}: spearman {r['spearman']:.4f} on {r['pairs']} pairs ({r['oov_pairs']} out of vocabulary)")
    if args.analogies:
        r = evaluate_analogies(vocab.words, vectors, args.analogies, args.restrict_vocab)
        print(f"{args.analogies}: accuracy {r['accuracy']:.4f} on {r['questions']} questions "
              f"({r['skipped']} skipped)")


def _embed(args: argparse.Namespace, rest: list[str]) -> None:
    from multissl import api

    out = api.embed(args.model_dir, ",".join(args.data), args.out, pool=args.pool, layer=args.layer,
                    normalize=args.normalize, strict=args.strict, batch_size=args.batch_size,
                    shard_size=args.shard_size, input_column=args.input_column, label_column=args.label_column,
                    overwrite=args.overwrite, index=args.index, make_map=args.map)
    print(f"embeddings saved in {out}" + (f"; map in {Path(out) / 'map.png'}" if args.map else ""))


def _search(args: argparse.Namespace, rest: list[str]) -> None:
    from multissl import api

    for hit in api.search(args.emb, args.query, avoid=args.avoid or [], k=args.k, reindex=args.reindex):
        label = hit["label"] or hit["data_label"] or ""
        print(f"{hit['score']:.4f}\t{hit['id']}\t{label}")


def _select(args: argparse.Namespace, rest: list[str]) -> None:
    from multissl import api

    picked = api.select(args.emb, args.budget, strategy=args.strategy, labels=args.labels, seed=args.seed,
                        measure=args.measure, out=args.out)
    print(f"{len(picked)} items to label next ({args.strategy}) written to {args.out or Path(args.emb) / 'next.csv'}")


def _curate(args: argparse.Namespace, rest: list[str]) -> None:
    from multissl import api

    api.curate(args.emb, port=args.port, host=args.host, classes=args.classes.split(",") if args.classes else ())


def _curate_parsers(sub) -> None:
    s = sub.add_parser("embed", help="pooled embeddings of every item of a dataset, as a datasets folder with a "
                                     "vector index (resumable; under torchrun each rank embeds its part)")
    s.add_argument("model_dir", help="a multissl export or an HF checkpoint folder (as --init_from takes)")
    s.add_argument("--data", nargs="+", required=True, help="files, folders (class sub-folders are labels), tables "
                                                           "(jsonl/csv/parquet) or datasets folders")
    s.add_argument("--out", required=True, help="the embeddings folder to write (or resume)")
    s.add_argument("--pool", choices=["mean", "cls"], default="mean")
    s.add_argument("--layer", type=int, default=-1, help="hidden state to pool: 0 embeddings, -1 the last layer")
    s.add_argument("--normalize", action="store_true", help="scale every embedding to unit l2 norm")
    s.add_argument("--strict", action="store_true", help="stop at the first unusable item instead of skipping it")
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--shard-size", type=int, default=1024, help="items per shard written")
    s.add_argument("--input-column", default="", help="tables: the column of paths or texts (default path / text)")
    s.add_argument("--label-column", default="label", help="tables: the column of labels, where there is one")
    s.add_argument("--index", choices=["auto", "flat", "hnsw", "ivfpq"], default="auto",
                   help="vector index: auto is exact (flat) up to 50k items, HNSW above")
    s.add_argument("--map", action="store_true", help="also draw a 2-D t-SNE map of the embeddings (map.png)")
    s.add_argument("--overwrite", action="store_true", help="replace --out instead of resuming it")
    s.set_defaults(func=_embed)

    s = sub.add_parser("search", help="items most like some and least like others (search by example)")
    s.add_argument("emb", help="a folder written by 'multissl embed'")
    s.add_argument("--query", nargs="+", required=True, help="ids of items to search like")
    s.add_argument("--avoid", nargs="+", default=None, help="ids of items to search away from")
    s.add_argument("--k", type=int, default=20)
    s.add_argument("--reindex", choices=["auto", "flat", "hnsw", "ivfpq"], default=None,
                   help="rebuild the vector index first")
    s.set_defaults(func=_search)

    s = sub.add_parser("select", help="choose what to label next (k-center greedy, k-means, uncertainty, random)")
    s.add_argument("emb", help="a folder written by 'multissl embed'")
    s.add_argument("--budget", type=int, required=True, help="how many items to choose")
    s.add_argument("--strategy", choices=["kcenter", "kmeans", "uncertainty", "random"], default="kcenter")
    s.add_argument("--measure", choices=["margin", "entropy"], default="margin", help="uncertainty: how it is scored")
    s.add_argument("--labels", default=None, help="CSV of labels so far (id or input, label), besides the page's")
    s.add_argument("--out", default=None, help="where to write the list (default EMB/next.csv)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_select)

    s = sub.add_parser("curate", help="a labelling page on localhost: search by example, next batches, labels")
    s.add_argument("emb", help="a folder written by 'multissl embed'")
    s.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--classes", default="", help="the label buttons, comma-separated (more can be added on the page)")
    s.set_defaults(func=_curate)


def parser() -> argparse.ArgumentParser:
    from multissl import __version__

    p = argparse.ArgumentParser(prog="multissl", description="Self-supervised pretraining for text, speech, vision.")
    p.add_argument("--version", action="version", version=f"multissl {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("pretrain", add_help=False,
                       help="pretrain an encoder from a recipe; any --key value overrides it",
                       description="Pretrain an encoder as RECIPE says. Any key of the recipe can be set after it with "
                                   "--key value (--max_steps 100, --method.ema.decay 0.999, --data corpus/); "
                                   "'multissl pretrain RECIPE --help' lists them all, with their types, values and "
                                   "what they do.")
    s.add_argument("recipe", nargs="?", help="a YAML file, or the name of a shipped recipe such as text/tiny "
                                             "(multissl recipes lists them)")
    s.add_argument("-h", "--help", action="store_true", help="show this help and, with RECIPE, every key of it")
    s.add_argument("--resume", action="store_true", help="continue the run in --output_dir")
    s.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    s.set_defaults(func=_pretrain, extra=True, parser=s)

    s = sub.add_parser("recipes", help="list the shipped recipes ('recipes show NAME' prints one)")
    rsub = s.add_subparsers(dest="recipes_command")
    r = rsub.add_parser("show", help="print a recipe, to copy and edit")
    r.add_argument("name", help="a shipped recipe's name, e.g. text/tiny")
    s.set_defaults(func=_recipes)

    s = sub.add_parser("export", help="write a run's encoder as a Hugging Face model folder")
    s.add_argument("run_dir")
    s.add_argument("out_dir")
    s.add_argument("--which", choices=["student", "teacher"], default=None,
                   help="default: the one the objective's paper evaluates (the student, I-JEPA's target encoder)")
    s.add_argument("--arch", default=None, help="HF class family, e.g. data2vec-text (default) or roberta")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=_export)

    s = sub.add_parser("push", help="upload an exported folder to the Hugging Face Hub")
    s.add_argument("model_dir")
    s.add_argument("repo_id")
    s.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the saved login)")
    s.add_argument("--private", action="store_true")
    s.add_argument("--endpoint", default=None, help="Hub URL (default: HF_ENDPOINT or huggingface.co)")
    s.set_defaults(func=_push)

    from multissl.protocols import DEFAULT_PROTOCOLS, PROTOCOLS, FineTuneConfig

    tune = FineTuneConfig()
    s = sub.add_parser("probe", help="linear, k-NN, layer-weighted and low-shot probes of frozen features, and "
                                     "fine-tuning, with standard errors, against random init (or --baseline) on "
                                     "the same folds",
                       epilog="protocols:\n" + "\n".join(
                           textwrap.fill(text, 100, initial_indent=f"  {name:<10}", subsequent_indent=" " * 12,
                                         break_on_hyphens=False) for name, text in PROTOCOLS.items()),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("model_dir")
    s.add_argument("--data", required=True, help="labelled JSON lines / CSV / parquet file, or class sub-folders")
    s.add_argument("--label-column", required=True)
    s.add_argument("--input-column", default="text")
    s.add_argument("--folds", type=int, default=5, help="cross-validation folds (every row is predicted once)")
    s.add_argument("--seeds", type=int, default=1, help="repeat with this many seeds and report mean ± sd")
    s.add_argument("--baseline", default=None, help="another export to compare with (default: random init)")
    s.add_argument("--max-samples", type=int, default=0, help="use at most this many rows (0: all)")
    s.add_argument("--pool", choices=["mean", "cls"], default="mean",
                   help="mean of the tokens or patches, or the CLS token (text: the first token)")
    s.add_argument("--sts", default=None, help="scored sentence pairs (CSV / JSON lines / parquet with sentence1, "
                                               "sentence2, score): adds Spearman's rho of cosine similarities")
    s.add_argument("--protocols", default=",".join(DEFAULT_PROTOCOLS),
                   help=f"comma-separated, of {', '.join(PROTOCOLS)} (see below); fine-tuning is slow, so it "
                        "runs only when named (default: %(default)s)")
    s.add_argument("--k", type=int, default=20, help="neighbours of the k-NN probes")
    s.add_argument("--temperature", type=float, default=0.07,
                   help="T of the weighted k-NN (votes exp(similarity / T), DINO's 0.07)")
    s.add_argument("--label-fractions", default="0.01,0.1",
                   help="shares of each training fold's labels for the low-shot linear probes (default: %(default)s)")
    s.add_argument("--finetune-epochs", type=int, default=tune.epochs, help="fine-tuning: passes over each "
                                                                            "training fold (default: %(default)s)")
    s.add_argument("--finetune-lr", type=float, default=tune.lr,
                   help="fine-tuning: peak AdamW learning rate, warm-up then linear decay (default: %(default)s)")
    s.add_argument("--finetune-batch-size", type=int, default=tune.batch_size,
                   help="fine-tuning: examples per update (default: %(default)s)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_probe)

    s = sub.add_parser("views", help="draw the augmented views a recipe makes (a row per example); any --key "
                                     "value overrides the recipe, e.g. --data")
    s.add_argument("recipe")
    s.add_argument("--out", required=True, help="the PNG to write")
    s.add_argument("--n", type=int, default=8, help="examples (rows)")
    s.set_defaults(func=_views, extra=True)

    s = sub.add_parser("audio", help="speech data tools")
    asub = s.add_subparsers(dest="audio_command", required=True)
    a = asub.add_parser("scan", help="durations, sample rates, channels and unusable files of a speech corpus")
    a.add_argument("paths", nargs="+", help="audio files, folders, manifests or datasets folders")
    a.add_argument("--sample-rate", type=int, default=16000)
    a.add_argument("--min-samples", type=int, default=0, help="shorter files count as unusable")
    a.add_argument("--audio-column", default="audio")
    a.set_defaults(func=_audio_scan)

    s = sub.add_parser("tokenizer", help="tokenizer tools")
    tsub = s.add_subparsers(dest="tokenizer_command", required=True)
    t = tsub.add_parser("train", help="train a BPE, WordPiece or Unigram tokenizer on text files")
    t.add_argument("--files", nargs="+", required=True)
    t.add_argument("--kind", choices=["bpe", "wordpiece", "unigram"], default="bpe")
    t.add_argument("--vocab-size", type=int, default=32000)
    t.add_argument("--min-frequency", type=int, default=2)
    t.add_argument("--out", required=True)
    t.add_argument("--overwrite", action="store_true")
    t.set_defaults(func=_tokenizer)
    s = sub.add_parser("word2vec", help="train skip-gram or CBOW word vectors (gensim-compatible output)")
    s.add_argument("corpus", nargs="+", help="text files or folders, or JSON lines / parquet files")
    s.add_argument("--out", required=True)
    mode = s.add_mutually_exclusive_group()
    mode.add_argument("--sg", dest="sg", action="store_true", help="skip-gram")
    mode.add_argument("--cbow", dest="sg", action="store_false", help="CBOW (the default, as in gensim)")
    s.add_argument("--dim", type=int, default=100)
    s.add_argument("--window", type=int, default=5)
    s.add_argument("--negative", type=int, default=5)
    s.add_argument("--min-count", type=int, default=5)
    s.add_argument("--max-vocab-size", type=int, default=None)
    s.add_argument("--sample", type=float, default=1e-3)
    s.add_argument("--alpha", type=float, default=0.025)
    s.add_argument("--min-alpha", type=float, default=1e-4)
    s.add_argument("--epochs", type=int, default=5)
    s.add_argument("--workers", type=int, default=2, help="CPU threads")
    s.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: the GPU kernels")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--text-column", default="text")
    s.add_argument("--tokenizer", default=None, help="a tokenizer folder (default: lower-cased words)")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=_word2vec, sg=False)

    s = sub.add_parser("word2vec-eval", help="word-pair similarity and analogy accuracy of word vectors")
    s.add_argument("vectors", help="a folder written by 'multissl word2vec'")
    s.add_argument("--pairs", nargs="+", default=None, help="word-pair files (WordSim-353, SimLex-999, ...)")
    s.add_argument("--analogies", default=None, help="a Google-format analogy file")
    s.add_argument("--restrict-vocab", type=int, default=300_000)
    s.set_defaults(func=_word2vec_eval)
    _curate_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = parser()
    args, rest = p.parse_known_args(argv)
    if rest and not getattr(args, "extra", False):
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        args.func(args, rest)
    except Exception as e:
        if isinstance(e, _stop_errors()):
            print(f"multissl: stopped: {e}", file=sys.stderr)
            return 3
        if isinstance(e, USAGE_ERRORS):
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            print(f"multissl: error: {msg}", file=sys.stderr)
            return 2
        raise
    finally:
        _end_process_group()
    return 0


def _end_process_group() -> None:
    """Destroy the process group a torchrun job's Trainer set up, before the interpreter exits: left
    to the interpreter's shutdown, its communication threads can abort the process after the run
    has finished ("terminate called without an active exception"). Torch-free commands skip it."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _stop_errors() -> tuple[type[Exception], ...]:
    """The errors that stop a training run cleanly. Their modules import torch, so they are looked
    up only where the command has loaded them (a command that has not cannot raise them): this
    keeps ``multissl word2vec`` and ``--help`` free of torch."""
    found = []
    for module, names in STOP_ERRORS.items():
        if module in sys.modules:
            found += [getattr(sys.modules[module], name) for name in names]
    return tuple(found)


if __name__ == "__main__":
    sys.exit(main())
