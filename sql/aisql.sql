-- duckdb-ft AISQL walk-through: Snowflake's AI_COMPLETE, AI_CLASSIFY, AI_FILTER and AI_AGG documentation examples,
-- on a local model: the hosted model names became 'smollm2-135m'; Snowflake's `:labels[0]` path became DuckDB's
-- `->> '$.labels[0]'`, and AI_FILTER(PROMPT('... {0}', x)) became AI_FILTER('...', x).
--
--   duckdb-ft aisql.duckdb < sql/aisql.sql
--
-- Any database file. A minute or two on a laptop CPU (the answers of a 135M model, but always in their shape).

-- The AISQL functions run on the database's default model unless a call names one (administrator's setting).
SET duckdb_ft_default_model = 'smollm2-135m';

-- AI_COMPLETE: a prompt; model parameters; structured output; details with usage.
SELECT AI_COMPLETE('smollm2-135m', 'What are large language models?',
                   model_parameters => {'max_tokens': 48}) AS answer;
SELECT AI_COMPLETE(
    model => 'smollm2-135m',
    prompt => 'how does a snowflake get its unique pattern?',
    model_parameters => {'temperature': 0.7, 'max_tokens': 10}
) AS answer;
SELECT AI_COMPLETE(
    model => 'smollm2-135m',
    prompt => 'Please categorize the sentiment of this review: "The food was great, but we waited 40 minutes '
              'and it was expensive." Answer for food quality, food taste, wait time and food cost.',
    model_parameters => {'temperature': 0, 'max_tokens': 96},
    response_format => {
        'type': 'json',
        'schema': {'type': 'object',
                   'properties': {'food_quality': {'type': 'string', 'enum': ['positive', 'negative', 'neutral']},
                                  'food_taste': {'type': 'string', 'enum': ['positive', 'negative', 'neutral']},
                                  'wait_time': {'type': 'string', 'enum': ['positive', 'negative', 'neutral']},
                                  'food_cost': {'type': 'string', 'enum': ['positive', 'negative', 'neutral']}},
                   'required': ['food_quality', 'food_taste', 'wait_time', 'food_cost']}}
) AS sentiment;
SELECT AI_COMPLETE(model => 'smollm2-135m', prompt => 'how does a snowflake get its unique pattern?',
                   model_parameters => {'max_tokens': 16}, show_details => TRUE)::JSON -> 'usage' AS usage;

-- AI_CLASSIFY: one label; several labels; labels with descriptions and a task description; over a table.
SELECT AI_CLASSIFY('One day I will see the world', ['travel', 'cooking']) AS classification;
SELECT AI_CLASSIFY('One day I will see the world and learn to cook my favorite dishes',
                   ['travel', 'cooking', 'reading', 'driving'], {'output_mode': 'multi'}) AS classification;
SELECT AI_CLASSIFY('I love to travel and cook Italian food',
                   [{'label': 'travel', 'description': 'content related to traveling'},
                    {'label': 'cooking', 'description': 'content related to preparing food'},
                    {'label': 'reading', 'description': 'content related to reading'}],
                   {'task_description': 'Determine topics related to the given text'}) AS classification;
CREATE OR REPLACE TEMPORARY TABLE text_classification_table AS
    SELECT 'France' AS input, ['North America', 'Europe', 'Asia'] AS classes
    UNION ALL SELECT 'Singapore', ['North America', 'Europe', 'Asia']
    UNION ALL SELECT 'one day I will see the world', ['travel', 'cooking', 'dancing'];
SELECT input, AI_CLASSIFY(input, classes) ->> '$.labels[0]' AS classification FROM text_classification_table;

-- AI_FILTER: a yes/no question; in WHERE over a table; in a JOIN's ON.
SELECT AI_FILTER('Is Canada in North America?') AS answer;
CREATE OR REPLACE TEMPORARY TABLE reviews AS
    SELECT * FROM (VALUES
        (1, 'Excellent Sony TV, great picture quality'),
        (1, 'Picture is too dark, sound is fine'),
        (2, 'The headphones broke after two days'),
        (2, 'Comfortable headphones with a long battery life')) AS t(product_id, review);
SELECT review FROM reviews WHERE AI_FILTER('Is the sentiment of this review positive?', review);
CREATE OR REPLACE TEMPORARY TABLE resumes AS SELECT 'Ten years of Python and SQL, led a data team' AS contents;
CREATE OR REPLACE TEMPORARY TABLE job_listings AS
    SELECT * FROM (VALUES ('Senior data engineer: Python, SQL'), ('Pastry chef')) AS t(description);
SELECT r.contents, j.description FROM resumes r
    JOIN job_listings j ON AI_FILTER('Does this resume fit this job description? ' || j.description, r.contents);

-- AI_AGG and AI_SUMMARIZE_AGG: aggregates, with no limit on the rows (they are read in window-sized parts).
SELECT AI_AGG(review, 'Identify the most positive rating and translate it into French and Polish, one word only')
    AS summarized_review FROM reviews;
SELECT product_id, AI_AGG(review, 'Summarize the reviews') AS summary FROM reviews GROUP BY product_id
    ORDER BY product_id;
SELECT AI_SUMMARIZE_AGG(review) AS summary FROM reviews;

-- Every call is counted under its own name.
SELECT function_name, sum(rows) AS rows FROM finetune_usage() GROUP BY function_name ORDER BY function_name;
