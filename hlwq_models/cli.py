"""The ``hlwq`` command line.

    hlwq eval [MODEL] --data FILE [--seq-len 1024] [--windows N] [--json]
    hlwq generate [MODEL] --prompt TEXT [--max-new-tokens 64] [--temperature 0] ...

MODEL is a Hugging Face Qwen3.5 checkpoint directory; by default the trained test fixture
``../shared/fixtures/tiny-qwen35-pystd`` next to this checkout.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

__all__ = ["main", "build_parser", "evaluate", "default_model_path", "read_tokens"]

_REPO = Path(__file__).resolve().parents[1]
_FIXTURES = _REPO.parent / "shared" / "fixtures"
DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float32": "float32", "fp32": "float32",
          "float16": "float16", "fp16": "float16"}


def default_model_path() -> Path:
    return _FIXTURES / "tiny-qwen35-pystd"


def _resolve_model(path: str | None) -> Path:
    p = Path(path) if path else default_model_path()
    if not p.is_dir():
        hint = "" if path else " (the default: the test fixture next to the checkout; pass MODEL explicitly)"
        raise SystemExit(f"hlwq: error: model directory {p} does not exist{hint}")
    if not (p / "config.json").is_file():
        raise SystemExit(f"hlwq: error: {p} has no config.json (not a Hugging Face checkpoint directory)")
    return p


def _device_dtype(args):
    import torch
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("hlwq: error: --device cuda requested but CUDA is not available")
    return device, getattr(torch, DTYPES[args.dtype])


def _load(args):
    from transformers import AutoTokenizer

    from .qwen35 import load_model

    path = _resolve_model(args.model)
    device, dtype = _device_dtype(args)
    try:
        model = load_model(path, device=device, dtype=dtype, impl=args.impl, progress=not getattr(args, "json", False))
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"hlwq: error: cannot load {path}: {e}")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    quantize(model, wbits=args.wbits, kvbits=args.kvbits, progress=not getattr(args, "json", False))
    return path, model, tokenizer


def quantize(model, *, wbits: int | None, kvbits: int | None, progress: bool = True) -> None:
    """HLWQ-quantize, in memory, every linear weight (lm_head included; the embedding is a table
    lookup and stays) to ``wbits`` (block 128) and make the KV cache ``kvbits``-bit (None: leave
    that part in the model dtype)."""
    from .qwen35.linear import quantize_model_

    if wbits is not None:
        quantize_model_(model, wbits, impl=model.impl, progress=progress)
    if kvbits is not None:
        model.use_quantized_kv(kvbits)


def read_tokens(tokenizer, data: bytes) -> list[int]:
    """Tokenize a file's bytes as text. UTF-8 text is tokenized exactly (for the fixture's byte
    tokenizer: token id == byte value). Bytes that are not UTF-8 become U+FFFD (with a warning):
    a text tokenizer has no way to represent them."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        print(f"hlwq: warning: data is not valid UTF-8 ({e}); undecodable bytes become U+FFFD", file=sys.stderr)
        text = data.decode("utf-8", errors="replace")
    return list(tokenizer.encode(text, add_special_tokens=False))


def evaluate(model, tokens: list[int], *, seq_len: int = 1024, windows: int | None = None, batch_size: int = 4,
             tokenizer=None, progress: bool = True) -> dict:
    """Mean cross-entropy per token over non-overlapping windows.

    Window i feeds tokens ``[i*L, i*L + L)`` and scores the next token at each position, i.e.
    tokens ``i*L+1 .. i*L+L`` given all earlier ones in the window (L predictions per window,
    windows start L tokens apart; the last token of one window is the first input of the next).
    Returns a dict with tokens, nll_per_token, ppl, bits_per_token and, with a tokenizer,
    bytes and bits_per_byte (bytes = UTF-8 bytes of the scored tokens' text).
    """
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    n_avail = (len(tokens) - 1) // seq_len
    if n_avail < 1:
        raise ValueError(f"data has {len(tokens)} tokens: fewer than one window of seq_len + 1 = {seq_len + 1}")
    n = n_avail if windows is None else min(windows, n_avail)
    if windows is not None and windows > n_avail:
        print(f"hlwq: warning: only {n_avail} windows of {seq_len} tokens in the data; using {n}", file=sys.stderr)
    data = torch.tensor(tokens[: n * seq_len + 1], dtype=torch.long)
    dev = model.device
    total_nll, total_bytes = 0.0, 0
    chunk = max(1, 2 ** 27 // (batch_size * model.config.vocab_size))  # fp32 logits per slice: <= 512 MiB
    kv_cached = getattr(model, "kv_bits", None) is not None
    if kv_cached:
        model.setup_cache(min(batch_size, n), seq_len)
    t0 = time.perf_counter()
    with torch.no_grad(), tqdm(total=n, desc="eval", unit="window", file=sys.stderr, disable=not progress) as bar:
        for w0 in range(0, n, batch_size):
            nb = min(batch_size, n - w0)
            idx = (torch.arange(w0, w0 + nb)[:, None] * seq_len + torch.arange(seq_len + 1)[None])
            win = data[idx]
            x, y = win[:, :-1].to(dev), win[:, 1:].to(dev)
            if kv_cached:  # the cached path, so attention reads the quantized keys and values
                h = model.hidden_states(x, torch.arange(seq_len, device=dev), start=True)
            else:
                h = model.hidden_states(x)
            nll = torch.zeros((), dtype=torch.float64, device=dev)
            for s in range(0, seq_len, chunk):
                logits = model.lm_logits(h[:, s:s + chunk]).float()
                nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[:, s:s + chunk].reshape(-1),
                                       reduction="sum").double()
            total_nll += float(nll)
            bar.update(nb)
    secs = time.perf_counter() - t0
    n_tok = n * seq_len
    if tokenizer is not None:
        # The scored tokens tile tokens[1 : n*L + 1]. Their bytes, from decoding prefixes that start
        # at a token boundary of the file (decoding each window alone would turn a multi-byte
        # character cut by a window edge into U+FFFD and miscount).
        total_bytes = (len(tokenizer.decode(tokens[: n_tok + 1]).encode("utf-8"))
                       - len(tokenizer.decode(tokens[:1]).encode("utf-8")))
    out = {"tokens": n_tok, "windows": n, "seq_len": seq_len, "nll_per_token": total_nll / n_tok,
           "ppl": math.exp(total_nll / n_tok), "bits_per_token": total_nll / n_tok / math.log(2)}
    if tokenizer is not None:
        out["bytes"] = total_bytes
        out["bits_per_byte"] = total_nll / math.log(2) / total_bytes
    if kv_cached:
        model.free_cache()
    out["seconds"] = round(secs, 3)
    out["tokens_per_s"] = round(n_tok / secs, 1) if secs > 0 else None
    return out


def _cmd_eval(args) -> int:
    data_path = Path(args.data) if args.data else _FIXTURES / "pystd-eval.bin"
    if not data_path.is_file():
        raise SystemExit(f"hlwq: error: data file {data_path} does not exist")
    if args.seq_len < 1:
        raise SystemExit(f"hlwq: error: --seq-len must be >= 1, got {args.seq_len}")
    if args.windows is not None and args.windows < 1:
        raise SystemExit(f"hlwq: error: --windows must be >= 1, got {args.windows}")
    path, model, tokenizer = _load(args)
    tokens = read_tokens(tokenizer, data_path.read_bytes())
    try:
        res = evaluate(model, tokens, seq_len=args.seq_len, windows=args.windows, batch_size=args.batch_size,
                       tokenizer=tokenizer, progress=not args.no_progress)
    except ValueError as e:
        raise SystemExit(f"hlwq: error: {e}")
    res = {"model": str(path), "data": str(data_path), **res, "device": str(model.device),
           "dtype": str(model.dtype).replace("torch.", ""), "impl": model.impl,
           "wbits": args.wbits, "kvbits": args.kvbits}
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{res['windows']} windows x {res['seq_len']} tokens = {res['tokens']} tokens on {res['device']} "
              f"({res['dtype']}), {res['seconds']} s")
        print(f"nll/token {res['nll_per_token']:.5f}  ppl {res['ppl']:.4f}  bits/byte {res.get('bits_per_byte', float('nan')):.5f}")
    return 0


def _cmd_generate(args) -> int:
    import torch

    from .qwen35 import generate

    path, model, tokenizer = _load(args)
    if args.compile:
        model.compile_elementwise()
    prompts = [list(tokenizer.encode(p, add_special_tokens=False)) for p in args.prompt]
    if any(not p for p in prompts):
        raise SystemExit("hlwq: error: every --prompt must give at least one token")
    stop = () if args.ignore_eos else None
    stream = len(prompts) == 1 and not args.no_stream
    printed = [""]
    new: list[int] = []

    def on_token(row: int, tok: int) -> None:
        new.append(tok)
        text = tokenizer.decode(new)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for its other bytes
            return
        sys.stdout.write(text[len(printed[0]):])
        sys.stdout.flush()
        printed[0] = text

    if stream:
        sys.stdout.write(args.prompt[0])
        sys.stdout.flush()
    t0 = time.perf_counter()
    outs = generate(model, prompts, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                    top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop_tokens=stop,
                    callback=on_token if stream else None)
    secs = time.perf_counter() - t0
    if stream:
        rest = tokenizer.decode(new)[len(printed[0]):]
        sys.stdout.write(rest + "\n")
    else:
        for p, o in zip(args.prompt, outs):
            sys.stdout.write(p + tokenizer.decode(o) + "\n")
    n = sum(len(o) for o in outs)
    print(f"[{n} tokens in {secs:.2f} s, {n / max(secs, 1e-9):.1f} tok/s incl. prefill, {model.device}]",
          file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hlwq", description="HLWQ: Hadamard-Lloyd quantized Qwen3.5 inference.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p):
        p.add_argument("model", nargs="?", default=None, metavar="MODEL",
                       help="Hugging Face Qwen3.5 checkpoint directory (default: the test fixture "
                            f"{default_model_path()})")
        p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
        p.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES),
                       help="dtype of weights and activations (default: bfloat16)")
        p.add_argument("--impl", default="auto", choices=("auto", "triton", "reference"),
                       help="kernel implementation for hlwq_kernels ops (default: auto: Triton on CUDA)")
        p.add_argument("--wbits", type=int, default=None, choices=range(2, 9), metavar="{2..8}",
                       help="HLWQ-quantize every linear weight (lm_head too) to this many bits on load "
                            "(default: keep the checkpoint's weights)")
        p.add_argument("--kvbits", type=int, default=None, choices=(2, 3, 4, 8),
                       help="store the attention KV cache as HLWQ codes of this many bits "
                            "(default: model dtype)")

    pe = sub.add_parser("eval", help="mean cross-entropy per token of a text file",
                        description="Mean cross-entropy per token (and perplexity, bits per byte) over "
                                    "non-overlapping windows of a file's tokens: window i feeds tokens "
                                    "[i*L, i*L+L) and scores tokens i*L+1 .. i*L+L.")
    common(pe)
    pe.add_argument("--data", default=None, metavar="FILE",
                    help="file to score, tokenized as UTF-8 text (default: the fixture's pystd-eval.bin)")
    pe.add_argument("--seq-len", type=int, default=1024, help="tokens per window (default: 1024)")
    pe.add_argument("--windows", type=int, default=None, metavar="N",
                    help="score only the first N windows (default: all)")
    pe.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default: 4)")
    pe.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    pe.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    pe.set_defaults(func=_cmd_eval)

    pg = sub.add_parser("generate", help="continue a prompt, streaming the text",
                        description="Continue one or more prompts (batched; streamed when there is one).")
    common(pg)
    pg.add_argument("--prompt", action="append", required=True,
                    help="prompt text; repeat for a batch of prompts")
    pg.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate at most (default: 64)")
    pg.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default), else sampling temperature")
    pg.add_argument("--top-k", type=int, default=None, help="sample only among the k most likely tokens")
    pg.add_argument("--top-p", type=float, default=None, help="nucleus sampling: smallest set with probability >= p")
    pg.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    pg.add_argument("--ignore-eos", action="store_true", help="do not stop at the end-of-text token")
    pg.add_argument("--no-stream", action="store_true", help="print the result at the end instead of streaming")
    pg.add_argument("--compile", action="store_true",
                    help="torch.compile the elementwise ops first (faster GPU decode; compiling takes ~1 min)")
    pg.set_defaults(func=_cmd_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
