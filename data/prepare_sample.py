"""Write data/raw/sample.txt: a small slice of nanollm's embedded synthetic corpus.

    python data/prepare_sample.py          # with nanollm installed; rewrites data/raw/sample.txt
"""

from pathlib import Path

from nanollm.corpus import synthetic_text

SAMPLE_CHARS, SAMPLE_SEED = 50_000, 0
SAMPLE_PATH = Path(__file__).parent / "raw" / "sample.txt"


def main():
    SAMPLE_PATH.parent.mkdir(parents=True, exist_ok=True)
    SAMPLE_PATH.write_text(synthetic_text(SAMPLE_CHARS, seed=SAMPLE_SEED), encoding="utf-8")
    print(f"wrote {SAMPLE_PATH} ({SAMPLE_PATH.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
