-- EVALUATE shop_bot (its newest version) against its base model on the held-out questions: one row per model and
-- metric; schema.yml tests the scores.
-- depends_on: {{ ref('shop_bot') }}
{{ config(materialized='evaluation', models=[var('base_model'), 'shop_bot'],
          options={'max_tokens': 16, 'metrics': ['exact_match', 'token_f1']}) }}
SELECT id, question AS prompt, answer AS completion FROM {{ ref('faq') }} WHERE split = 'test'
