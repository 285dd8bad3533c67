"""Convert the first N records of RoundEdit's hard split into Edit Auditor's flat request format.

    python scripts/make_hard_cases.py PATH/TO/conflictedit_roundedit 40 > resources/hard/roundedit_hard_40.json

RoundEdit (Li et al., "Unveiling the Pitfalls of Knowledge Editing for Large Language Models",
ICLR 2024): each record edits a subject that has several true objects to a new object. The edit
prompt is the relation's prompt; two paraphrases come from the relation's prompts in
round_prompts.json. Run once by a developer; the product never reads the source folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def convert(src: Path, n: int) -> list[dict]:
    records = json.loads((src / "hard.json").read_text(encoding="utf-8"))
    prompts = json.loads((src / "round_prompts.json").read_text(encoding="utf-8"))
    out = []
    for i, rec in enumerate(records[:n]):
        edit, rel = rec["edit"], rec["edit"]["relation"]
        subject = edit["subject"]["label"]
        out.append({
            "id": f"roundedit-hard-{i}-{rel['id']}",
            "prompt": rel["prompt"],
            "subject": subject,
            "target_new": edit["new_object"]["label"],
            "target_true": edit["object"]["label"],
            "paraphrases": [p.replace("{}", subject) for p in prompts.get(rel["id"], [])[:2]],
            "source": {"file": "hard.json", "index": i, "type": rec["type"],
                       "true_objects": [o["label"] for o in rec["true_objects"]]},
        })
    return out


if __name__ == "__main__":
    print(json.dumps(convert(Path(sys.argv[1]), int(sys.argv[2])), indent=1, ensure_ascii=False))
