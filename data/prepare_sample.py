"""Write the sample data in data/: slices of nanollm's embedded synthetic corpus.

    data/raw/sample.txt                  50,000 characters of the text corpus
    data/instruct/alpaca_sample.jsonl    200 instruction records, Alpaca format
    data/instruct/sharegpt_sample.jsonl  the same 200 as ShareGPT conversations

    python data/prepare_sample.py        # with nanollm installed; rewrites those files

A test checks that the files equal what this script writes, so they never drift.
"""

import json
from pathlib import Path

from nanollm.corpus import synthetic_instructions, synthetic_text

DATA = Path(__file__).parent
SAMPLE_CHARS, SAMPLE_SEED, SAMPLE_RECORDS = 50_000, 0, 200


def sample_files():
    """{path: text} of every sample file."""
    def jsonl(format):
        records = synthetic_instructions(SAMPLE_RECORDS, seed=SAMPLE_SEED, format=format)
        return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)

    return {DATA / "raw" / "sample.txt": synthetic_text(SAMPLE_CHARS, seed=SAMPLE_SEED),
            DATA / "instruct" / "alpaca_sample.jsonl": jsonl("alpaca"),
            DATA / "instruct" / "sharegpt_sample.jsonl": jsonl("sharegpt")}


def main():
    for path, text in sample_files().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
