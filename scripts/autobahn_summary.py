"""Summarises an Autobahn index.json by case group; fails on any failed case
or a missing required group (1-7, 9, 10). NON-STRICT and INFORMATIONAL are
passes in Autobahn's own grading."""
import collections
import json
import sys

PASS = {"OK", "NON-STRICT", "INFORMATIONAL"}
REQUIRED = {"1", "2", "3", "4", "5", "6", "7", "9", "10"}

index = json.load(open(sys.argv[1]))
counts = collections.defaultdict(collections.Counter)
failed = []
for cases in index.values():
    for case, r in cases.items():
        group = case.split(".")[0]
        ok = r["behavior"] in PASS and r["behaviorClose"] in PASS
        counts[group][r["behavior"]] += 1
        if not ok:
            failed.append(f'{case}: {r["behavior"]}/{r["behaviorClose"]}')

print(f'{"group":>5} {"cases":>6}  behaviours')
for group in sorted(counts, key=int):
    c = counts[group]
    print(f"{group:>5} {sum(c.values()):>6}  " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
missing = REQUIRED - set(counts)
for case in failed:
    print("FAILED", case)
if missing:
    print("missing groups:", ", ".join(sorted(missing, key=int)))
total = sum(sum(c.values()) for c in counts.values())
print(f"autobahn: {total - len(failed)} passed, {len(failed)} failed")
sys.exit(1 if failed or missing else 0)
