{#- materialized='finetune': the model's SELECT (columns prompt and completion, or messages) trains a fine-tuned
    model named after the dbt model (config finetune_name to choose another). Each `dbt run` adds a version
    (FINETUNE's option {"version": true}: v1, v2, ...; the newest becomes the default), waits for the job
    (config wait_seconds, default 3600), and appends a row to the relation the model builds: job_id, model,
    model_version, base_model, status, training_loss, validation_loss, finished_at. A job that does not succeed
    fails the run with its error.
    Config: base_model (required), options (FINETUNE's options, a dict), validation_sql (a SELECT), version
    (default true; false: CREATE once, an error when the name is taken), wait_seconds. -#}
{% materialization finetune, adapter='duckdb' %}
  {%- set target = this.incorporate(type='table') -%}
  {%- set name = config.get('finetune_name', this.identifier) -%}
  {%- set base_model = config.require('base_model') -%}
  {%- set options = config.get('options', {}) -%}
  {%- set validation = config.get('validation_sql', none) -%}
  {%- set versioned = config.get('version', true) -%}
  {%- set wait_seconds = config.get('wait_seconds', 3600) -%}
  {%- set opts = {} -%}
  {%- do opts.update(options) -%}
  {%- if versioned -%}{%- do opts.update({'version': true}) -%}{%- endif -%}

  {{ run_hooks(pre_hooks) }}

  {%- call statement('create_job', fetch_result=True) -%}
    SELECT finetune('CREATE', {{ duckdb_ft.literal(name) }}, {{ duckdb_ft.literal(base_model) }},
                    {{ duckdb_ft.literal(sql) }},
                    {{ duckdb_ft.literal(validation) if validation else 'NULL' }},
                    {{ duckdb_ft.literal(tojson(opts)) }})
  {%- endcall -%}
  {%- set job_id = load_result('create_job')['data'][0][0] -%}
  {{ log("duckdb-ft: " ~ name ~ " training as job " ~ job_id, info=True) }}

  {%- call statement('wait_job', fetch_result=True) -%}
    SELECT finetune('WAIT', '{{ job_id }}', {{ wait_seconds }})
  {%- endcall -%}
  {%- set status = load_result('wait_job')['data'][0][0] -%}
  {%- if status != 'SUCCESS' -%}
    {%- call statement('job_error', fetch_result=True) -%}
      SELECT coalesce(error.message, 'no error recorded') FROM finetune('DESCRIBE', '{{ job_id }}')
    {%- endcall -%}
    {{ exceptions.raise_compiler_error("duckdb-ft job " ~ job_id ~ " for model " ~ name ~ " ended " ~ status ~ ": "
                                        ~ load_result('job_error')['data'][0][0]) }}
  {%- endif -%}

  {%- set record -%}
    SELECT id AS job_id, model, model_version, base_model, status, training_result.training_loss AS training_loss,
           training_result.validation_loss AS validation_loss, now() AS finished_at
    FROM finetune('DESCRIBE', '{{ job_id }}')
  {%- endset -%}
  {%- set existing = adapter.get_relation(database=target.database, schema=target.schema,
                                          identifier=target.identifier) -%}
  {%- call statement('main') -%}
    {%- if existing is none -%}
      CREATE TABLE {{ target }} AS {{ record }}
    {%- else -%}
      INSERT INTO {{ target }} {{ record }}
    {%- endif -%}
  {%- endcall -%}

  {{ run_hooks(post_hooks) }}
  {%- do adapter.commit() -%}
  {{ return({'relations': [target]}) }}
{% endmaterialization %}
