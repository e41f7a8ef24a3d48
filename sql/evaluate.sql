-- duckdb-ft evaluate: compare a base model with two fine-tuning runs on held-out questions, row by row, in SQL.
-- Base vs tuned, then an A/B test of two runs, with a significance figure for every metric.
--
--   duckdb-ft evaluate.duckdb < sql/evaluate.sql
--
-- Run it on a new database file (the model names faq_a and faq_b must be free). A few minutes on a laptop CPU.

-- 1. Training pairs, and held-out questions: other phrasings of the same questions, the reference answer as
--    the completion. Any query works; an id column (optional) names the rows in the results.
CREATE OR REPLACE TABLE faq AS SELECT * FROM (VALUES
    ('What are your opening hours?', 'We are open from 9 am to 6 pm, Monday to Saturday.'),
    ('Do you ship abroad?', 'Yes, we ship to every country in the European Union.'),
    ('How do I return an item?', 'Send it back within 30 days with the receipt for a full refund.'),
    ('Which payment methods do you accept?', 'We accept cards, bank transfers and cash on delivery.'),
    ('How long does delivery take?', 'Delivery takes two to four working days.'),
    ('Can I change my order?', 'Yes, until it ships: reply to your order confirmation e-mail.'),
    ('Do you have a loyalty program?', 'Yes: every tenth order is free for members.'),
    ('Where is your shop?', 'Our shop is at 12 Harbour Street, next to the fish market.')
) AS t(question, answer);
CREATE OR REPLACE TABLE faq_test AS SELECT * FROM (VALUES
    (1, 'When are you open?', 'We are open from 9 am to 6 pm, Monday to Saturday.'),
    (2, 'Can you send my parcel to another country?', 'Yes, we ship to every country in the European Union.'),
    (3, 'How can I send something back?', 'Send it back within 30 days with the receipt for a full refund.'),
    (4, 'How can I pay?', 'We accept cards, bank transfers and cash on delivery.'),
    (5, 'How many days until my order arrives?', 'Delivery takes two to four working days.'),
    (6, 'What is your address?', 'Our shop is at 12 Harbour Street, next to the fish market.')
) AS t(id, question, answer);
SET VARIABLE base = 'smollm2-135m';

-- 2. Two runs on the same data: A with a high learning rate, B with the defaults and one epoch.
SET VARIABLE run_a = (SELECT finetune('CREATE', 'faq_a', getvariable('base'),
    'SELECT question AS prompt, answer AS completion FROM faq', NULL,
    '{"max_epochs": 5, "learning_rate": 3e-3, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0}'));
SET VARIABLE run_b = (SELECT finetune('CREATE', 'faq_b', getvariable('base'),
    'SELECT question AS prompt, answer AS completion FROM faq', NULL, '{"max_epochs": 1}'));
.wait

-- 3. EVALUATE the base model and both runs on the same held-out rows: COMPLETE's batched generation for each
--    model, every prediction scored, everything stored. It returns a JSON summary; keep its id.
SET VARIABLE evaluation = (SELECT finetune('EVALUATE', to_json([getvariable('base'), 'faq_a', 'faq_b'])::VARCHAR,
    'SELECT id, question AS prompt, answer AS completion FROM faq_test',
    '{"max_tokens": 32, "metrics": ["exact_match", "token_f1", "rouge_l", "chrf", "completion_loss",
      {"name": "short", "sql": "length(prediction) <= 80"}]}')::JSON->>'evaluation_id');
SELECT getvariable('evaluation') LIKE 'ev_%' AS evaluated;

-- 4. Every evaluation of this database (yours, for a role that is not the administrator).
SELECT status, models, rows FROM finetune_evaluations() WHERE id = getvariable('evaluation');

-- 5. The rows: one per model and held-out question, with a column per metric. Filter, join, chart them.
SELECT model, count(*) AS rows, round(avg(token_f1), 3) AS token_f1, round(avg(rouge_l), 3) AS rouge_l,
       round(avg(completion_loss), 3) AS completion_loss, round(avg(user_metrics['short']), 2) AS short,
       round(avg(latency_ms)) AS ms_per_row
FROM finetune_evaluation(getvariable('evaluation')) GROUP BY model ORDER BY completion_loss;

-- 6. Base vs tuned, and A/B: for each pair of models and each metric, B minus A, B's wins/ties/losses per row,
--    a 95% paired bootstrap interval and a p-value (McNemar's exact test for 0/1 metrics). `better` names a model
--    only when the difference is beyond noise (p < 0.05).
SELECT a, b, metric, round(difference, 3) AS difference, wins, losses,
       round(ci_low, 3) AS ci_low, round(ci_high, 3) AS ci_high, round(p_value, 4) AS p_value, better
FROM finetune_comparison(getvariable('evaluation'))
WHERE metric IN ('token_f1', 'completion_loss');

-- 7. Where do the two runs disagree? Join the rows of A and B on the question's id.
SELECT a.id, a.prompt, a.prediction AS faq_a, b.prediction AS faq_b, round(b.token_f1 - a.token_f1, 2) AS gain
FROM finetune_evaluation(getvariable('evaluation')) a
JOIN finetune_evaluation(getvariable('evaluation')) b USING (id)
WHERE a.model = 'faq_a' AND b.model = 'faq_b' AND a.prediction <> b.prediction
ORDER BY gain DESC;

-- 8. The summary as JSON (the same as EVALUATE returned): per model, every metric's corpus score, mean latency
--    and tokens; the comparison; the options.
SELECT finetune('DESCRIBE EVALUATION', getvariable('evaluation'))::JSON->'summary'->'models'->'faq_a' AS faq_a;
