{#- materialized='evaluation': EVALUATE on the model's SELECT (prompt, completion as the reference, optional id),
    for the models of config `models` (a list: fine-tuned or base models, `name@version` for a version); the
    relation it builds has one row per model and metric: evaluation_id, model, metric, score, rows, evaluated_at
    (replaced on each run). Config options: EVALUATE's options (a dict: metrics, max_tokens, ...). Test it with
    duckdb_ft.metric_at_least. -#}
{% materialization evaluation, adapter='duckdb' %}
  {%- set target = this.incorporate(type='table') -%}
  {%- set models = config.require('models') -%}
  {%- set options = config.get('options', {}) -%}

  {{ run_hooks(pre_hooks) }}

  {%- call statement('evaluate', fetch_result=True) -%}
    SELECT finetune('EVALUATE', {{ duckdb_ft.literal(tojson(models)) }}, {{ duckdb_ft.literal(sql) }},
                    {{ duckdb_ft.literal(tojson(options)) }})
  {%- endcall -%}
  {%- set summary = fromjson(load_result('evaluate')['data'][0][0]) -%}
  {{ log("duckdb-ft: evaluation " ~ summary['evaluation_id'] ~ " of " ~ models | join(', '), info=True) }}

  {%- set values = [] -%}
  {%- for model, scores in summary['models'].items() -%}
    {%- for metric, score in scores.items() if score is number -%}
      {%- do values.append("(" ~ duckdb_ft.literal(summary['evaluation_id']) ~ ", " ~ duckdb_ft.literal(model) ~ ", "
                           ~ duckdb_ft.literal(metric) ~ ", " ~ score ~ "::DOUBLE, " ~ summary['rows'] ~ ")") -%}
    {%- endfor -%}
  {%- endfor -%}
  {%- call statement('main') -%}
    CREATE OR REPLACE TABLE {{ target }} AS
    SELECT *, now() AS evaluated_at FROM (VALUES {{ values | join(', ') }}) t(evaluation_id, model, metric, score, "rows")
  {%- endcall -%}

  {{ run_hooks(post_hooks) }}
  {%- do adapter.commit() -%}
  {{ return({'relations': [target]}) }}
{% endmaterialization %}
