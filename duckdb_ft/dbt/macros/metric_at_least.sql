{#- A generic test on an evaluation model: fails when `metric` of `for_model` (every model, if not given) is
    below `threshold`, or has no score at all.
      models: [{name: shop_eval, data_tests: [{duckdb_ft.metric_at_least: {arguments: {metric: exact_match,
                                                                threshold: 0.5, for_model: shop_bot}}}]}] -#}
{% test metric_at_least(model, metric, threshold, for_model=none) %}
WITH scored AS (
    SELECT model, metric, score FROM {{ model }}
    WHERE metric = {{ duckdb_ft.literal(metric) }}
    {%- if for_model %} AND model = {{ duckdb_ft.literal(for_model) }}{% endif %}
)
SELECT model, metric, score, {{ threshold }} AS threshold FROM scored WHERE score < {{ threshold }}
UNION ALL
SELECT {{ duckdb_ft.literal(for_model or 'any model') }}, {{ duckdb_ft.literal(metric) }}, NULL, {{ threshold }}
WHERE NOT EXISTS (SELECT 1 FROM scored)
{% endtest %}
