-- COMPLETE over a table with the fine-tuned model: the answers to the held-out questions.
-- depends_on: {{ ref('shop_bot') }}
{{ config(materialized='table') }}
SELECT id, question,
       complete('shop_bot', question, '{"max_tokens": 16, "temperature": 0}')::JSON->'choices'->0->>'messages' AS answer
FROM {{ ref('faq') }} WHERE split = 'test'
