-- A fine-tuned model, trained on the training questions: each `dbt run` adds a version (v1, v2, ...) and a row
-- to this model's table (job_id, model, model_version, status, losses).
{{ config(materialized='finetune', base_model=var('base_model'),
          options={'max_epochs': 2, 'learning_rate': 0.001},
          post_hook="{{ duckdb_ft.statement('GRANT USAGE ON MODEL shop_bot TO ROLE public') }}") }}
SELECT question AS prompt, answer AS completion FROM {{ ref('faq') }} WHERE split = 'train'
