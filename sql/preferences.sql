-- duckdb-ft preferences: learn from a feedback table (which of two answers an agent kept) with DPO, and compare it
-- with supervised fine-tuning on the kept answers only, on held-out pairs, with EVALUATE's preference_accuracy.
--
--   duckdb-ft preferences.duckdb < sql/preferences.sql
--
-- Run it on a new database file (the model names polite_sft and polite_dpo must be free). A few minutes on a CPU.

-- 1. A feedback table made by code: for each customer question, the answer the agent kept is polite and gives
--    the order number; the one discarded is curt. Every fourth question is held out (split = 'test'): its phrasing
--    ("Any news on order ...?") and its curt answer are never seen in training.
CREATE OR REPLACE TABLE feedback AS
SELECT i AS id,
       ['Where is my order ', 'Any news on order ', 'When will order ', 'Has order '][i % 4 + 1] || (4100 + i)
           || ['?', '?', ' arrive?', ' shipped yet?'][i % 4 + 1] AS question,
       'Thank you! Order ' || (4100 + i) || ' ships today.' AS kept,
       ['No idea, ask someone else.', 'Not my problem, ask someone.', 'Dunno, check the website.',
        'Stop asking me about it.'][i % 4 + 1] AS discarded,
       CASE WHEN i % 4 = 1 THEN 'test' ELSE 'train' END AS split
FROM range(48) t(i);
SELECT split, count(*) AS pairs FROM feedback GROUP BY split ORDER BY split;

-- 2. Two models from the same feedback: SFT on the kept answers only, and DPO on the pairs (method "dpo": the
--    query returns prompt, chosen and rejected; the reference policy is the base model).
SET VARIABLE sft = (SELECT finetune('CREATE', 'polite_sft', 'smollm2-135m',
    'SELECT question AS prompt, kept AS completion FROM feedback WHERE split = ''train''', NULL,
    '{"max_epochs": 3, "learning_rate": 1e-3}'));
SET VARIABLE dpo = (SELECT finetune('CREATE', 'polite_dpo', 'smollm2-135m',
    'SELECT question AS prompt, kept AS chosen, discarded AS rejected FROM feedback WHERE split = ''train''', NULL,
    '{"method": "dpo", "beta": 0.1, "max_epochs": 3, "learning_rate": 1e-3}'));
.wait

-- 3. DPO's training metrics, as TRL logs them: the reward of the chosen and rejected answers (beta times the
--    log-probability ratio to the reference), how often chosen wins, and the margin.
SELECT step, round(training_loss, 4) AS loss,
       round(method_metrics['rewards/chosen'], 3) AS chosen, round(method_metrics['rewards/rejected'], 3) AS rejected,
       round(method_metrics['rewards/accuracies'], 2) AS accuracy, round(method_metrics['rewards/margins'], 3) AS margin
FROM finetune_history(getvariable('dpo')) ORDER BY step DESC LIMIT 3;

-- 4. EVALUATE base, SFT and DPO on the held-out pairs: preference_accuracy is 1 for a row when the model finds the
--    kept answer (the completion) more likely than the discarded one (the column rejected). It needs no
--    generation, so max_tokens is 1.
SET VARIABLE evaluation = (SELECT finetune('EVALUATE', to_json(['smollm2-135m', 'polite_sft', 'polite_dpo'])::VARCHAR,
    'SELECT id, question AS prompt, kept AS completion, discarded AS rejected FROM feedback WHERE split = ''test''',
    '{"max_tokens": 1, "metrics": ["preference_accuracy", "completion_loss"]}')::JSON->>'evaluation_id');
SELECT model, count(*) AS pairs, round(avg(preference_accuracy), 3) AS preference_accuracy,
       round(avg(completion_loss), 3) AS completion_loss
FROM finetune_evaluation(getvariable('evaluation')) GROUP BY model ORDER BY preference_accuracy;

-- 5. Each pair of models on each metric: wins and losses per row, McNemar's p-value for preference_accuracy, and
--    the better model when the difference is beyond noise (p < 0.05).
SELECT a, b, metric, round(difference, 3) AS difference, wins, losses, round(p_value, 4) AS p_value, better
FROM finetune_comparison(getvariable('evaluation')) WHERE metric = 'preference_accuracy';
