"""Export formats on the default model (issue 16): train SmolLM2-135M briefly (16 rows, 1 epoch), export it
``merged`` and ``gguf`` (F32), print each export's seconds and size, then load both in a fresh interpreter with
transformers alone (peft made unimportable; the GGUF through ``gguf_file=``) and count the prompts whose greedy
answer (12 tokens) equals COMPLETE's. Run: ``.venv/bin/python benchmarks/export_formats.py`` (about 3 min on a
2-core CPU)."""
import json, os, subprocess, sys, tempfile, time
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import duckdb_ft
d = tempfile.mkdtemp(prefix="duckdb-ft-export-")
db = f"{d}/r.duckdb"
con = duckdb_ft.connect(db)
con.execute("CREATE TABLE t AS SELECT 'What is the code of item ' || i || '?' AS p, 'The code is ' || (i*7) || '.' AS c FROM range(16) t(i)")
t = time.time()
job = con.execute("SELECT finetune('CREATE', 'real', 'smollm2-135m', 'SELECT p AS prompt, c AS completion FROM t', NULL, ?)",
                  [json.dumps({"max_epochs": 1, "batch_size": 8, "max_seq_length": 64, "learning_rate": 1e-3})]).fetchall()[0][0]
print("status", duckdb_ft.wait(con, job), "train s", round(time.time() - t, 1), flush=True)
prompts = ["What is the code of item 3?", "What is the capital of France?", "Name a colour."]
ans = [json.loads(con.execute("SELECT complete('real', ?, '{\"max_tokens\": 12, \"temperature\": 0}')", [p]).fetchall()[0][0]) for p in prompts]
for fmt in ("merged", "gguf"):
    t = time.time()
    path = duckdb_ft.export_model(con, "real", f"{d}/{fmt}", format=fmt)
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)
    print(fmt, "export s", round(time.time() - t, 1), "MB", round(size / 1e6, 1), flush=True)
print(json.dumps([a["choices"][0]["messages"] for a in ans]))
con.close()
LOAD = r'''
import json, sys
sys.modules["peft"] = None
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
d, prompts = sys.argv[1], json.loads(sys.argv[2])
out = {}
for kind, kw in (("merged", {}), ("gguf", {"gguf_file": "model.gguf"})):
    path = f"{d}/{kind}"
    tok = AutoTokenizer.from_pretrained(path, **kw); m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kw).eval()
    res = []
    for p in prompts:
        ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            g = m.generate(**ids, max_new_tokens=12, do_sample=False, eos_token_id=json.loads(sys.argv[3]))
        res.append(tok.decode(g[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    out[kind] = res
print(json.dumps(out))
'''
stops = json.load(open(f"{d}/merged/generation_config.json"))["eos_token_id"]
r = subprocess.run([sys.executable, "-c", LOAD, d, json.dumps(prompts), json.dumps(stops)], capture_output=True, text=True)
print(r.stdout[-2000:], r.stderr[-1500:] if r.returncode else "")
loaded = json.loads(r.stdout.strip().splitlines()[-1])
ours = [a["choices"][0]["messages"] for a in ans]
for k in ("merged", "gguf"):
    print(k, "equal to COMPLETE:", sum(a == b for a, b in zip(ours, loaded[k])), "/", len(ours))
