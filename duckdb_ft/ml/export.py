"""Export a fine-tuned model as a PEFT adapter folder, for use outside duckdb-ft.

The folder holds ``adapter_model.safetensors`` and ``adapter_config.json`` (with ``base_model_name_or_path``), as
``PeftModel.save_pretrained`` writes them, so ``PeftModel.from_pretrained(base_model, folder)`` loads it, and the
base model's tokenizer beside it, so the folder is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..catalog import models as modeldb
from ..errors import AlreadyExists, NotFound
from ..queries import parse_model_name
from . import models


def export_model(session: Any, name: str, folder: str) -> str:
    """Write model ``name`` as a PEFT adapter folder at ``folder`` (which must not exist); return its path.

    Needs OWNERSHIP of the model: exporting hands its weights out of the database's governance.
    """
    schema, model = parse_model_name(name, session.schema)
    cur = session.engine.cursor()
    row = modeldb.get_model(cur, schema, model)
    if row is None:
        raise NotFound(f"model '{schema}.{model}' does not exist (SHOW MODELS lists them)")
    session.checker().require_owner("MODEL", f"{schema}.{model}", "export")
    target = Path(folder).expanduser().resolve()
    if target.exists():
        raise AlreadyExists(f"{target} exists already: export into a new folder")
    base_path = models.resolve(row["base_model"])
    config = models.lora_config_from_dict(json.loads(row["lora_config"]))
    config.base_model_name_or_path = base_path
    config.inference_mode = True
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
    try:
        config.save_pretrained(str(tmp))
        # peft names adapter weights without the adapter name: what get_peft_model_state_dict returned at training
        (tmp / "adapter_model.safetensors").write_bytes(bytes(row["adapter"]))
        models.load_tokenizer(base_path).save_pretrained(str(tmp))
        (tmp / "duckdb_ft.json").write_text(json.dumps({
            "model": f"{schema}.{model}", "base_model": row["base_model"], "job_id": row["job_id"],
            "created_on": row["created_on"], "training_loss": row["training_loss"],
            "validation_loss": row["validation_loss"]}, indent=2))
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(target)
