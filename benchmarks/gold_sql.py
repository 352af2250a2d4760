"""The DuckDB baseline's gold queries (both feature sets): the fast form a strong SQL engineer would write.

Daily pre-aggregation per (user, day), a dense per-user calendar, window frames over whole days
(ROWS frames are exact because the calendar is dense), and count-distinct by coverage intervals
(each (user, merchant, day) covers the next 30 as-of days, truncated at the next occurrence, counted with
a running sum) - never a range join of every event against every as-of day.

`{events}` is a relation of silver transactions (a table name or `read_parquet('...')`), `{users}` one of
silver users (user_id, country, signup_ts). The as-of days covered are the first event day + 1 .. the last
event day + 1, as in `pipelines.stages.gold`.
"""

USER_SPEND_DAILY = """
WITH ev AS (
    SELECT user_id, merchant_id, amount, CAST(ts AS DATE) AS d FROM {events}
),
bounds AS (SELECT MIN(d) + 1 AS lo, MAX(d) + 1 AS hi FROM ev),
daily AS (
    SELECT user_id, d, SUM(amount) AS s, COUNT(*) AS c FROM ev GROUP BY ALL
),
span AS (
    SELECT user_id, MIN(d) AS first_d, MAX(d) AS last_d FROM daily GROUP BY ALL
),
calendar AS (  -- every day a user's windows can see: first event day .. last as-of day
    SELECT user_id, CAST(g.day AS DATE) AS d
    FROM span, bounds,
         LATERAL generate_series(first_d, LEAST(last_d + 90, bounds.hi - 1), INTERVAL 1 DAY) AS g(day)
),
dense AS (
    SELECT c.user_id, c.d, COALESCE(x.s, 0) AS s, COALESCE(x.c, 0) AS n
    FROM calendar c LEFT JOIN daily x USING (user_id, d)
),
windows AS (  -- frames end on the day before as_of = d + 1
    SELECT user_id, d + 1 AS as_of_day,
        SUM(s) OVER w7 AS spend_7d, SUM(s) OVER w30 AS spend_30d, SUM(s) OVER w90 AS spend_90d,
        SUM(n) OVER w7 AS tx_count_7d, SUM(n) OVER w30 AS tx_count_30d, SUM(n) OVER w90 AS tx_count_90d,
        MAX(CASE WHEN n > 0 THEN d END) OVER w90 AS last_day
    FROM dense
    WINDOW w7 AS (PARTITION BY user_id ORDER BY d ROWS BETWEEN 6 PRECEDING AND CURRENT ROW),
           w30 AS (PARTITION BY user_id ORDER BY d ROWS BETWEEN 29 PRECEDING AND CURRENT ROW),
           w90 AS (PARTITION BY user_id ORDER BY d ROWS BETWEEN 89 PRECEDING AND CURRENT ROW)
),
seen AS (SELECT DISTINCT user_id, merchant_id, d FROM ev),
cover AS (  -- as-of days [d+1, min(d+30, next occurrence)] see this merchant through this occurrence
    SELECT user_id, d + 1 AS start_day,
           LEAST(d + 30, COALESCE(LEAD(d) OVER (PARTITION BY user_id, merchant_id ORDER BY d), d + 30)) AS end_day
    FROM seen
),
edges AS (
    SELECT user_id, start_day AS day, 1 AS delta FROM cover
    UNION ALL SELECT user_id, end_day + 1, -1 FROM cover
),
delta AS (SELECT user_id, day, SUM(delta) AS delta FROM edges GROUP BY ALL),
distinct_merchants AS (
    SELECT w.user_id, w.as_of_day,
           SUM(COALESCE(delta.delta, 0)) OVER (PARTITION BY w.user_id ORDER BY w.as_of_day
                                               ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS dm
    FROM windows w LEFT JOIN delta ON delta.user_id = w.user_id AND delta.day = w.as_of_day
)
SELECT w.user_id,
       CAST(w.as_of_day AS TIMESTAMPTZ) AS as_of,
       CAST(w.spend_7d AS DOUBLE) AS spend_7d, CAST(w.spend_30d AS DOUBLE) AS spend_30d,
       CAST(w.spend_90d AS DOUBLE) AS spend_90d,
       w.tx_count_7d::BIGINT AS tx_count_7d, w.tx_count_30d::BIGINT AS tx_count_30d,
       w.tx_count_90d::BIGINT AS tx_count_90d,
       CASE WHEN w.tx_count_30d > 0 THEN CAST(w.spend_30d AS DOUBLE) / w.tx_count_30d END AS avg_amount_30d,
       dm.dm::BIGINT AS distinct_merchants_30d,
       (w.as_of_day - w.last_day)::BIGINT AS days_since_last_tx,
       (w.as_of_day - CAST(u.signup_ts AS DATE))::BIGINT AS tenure_days,
       u.country
FROM windows w
JOIN distinct_merchants dm USING (user_id, as_of_day)
JOIN bounds ON w.as_of_day BETWEEN bounds.lo AND bounds.hi
LEFT JOIN {users} u USING (user_id)
WHERE w.tx_count_90d > 0
"""

MERCHANT_ACTIVITY = """
WITH ev AS (
    SELECT merchant_id, user_id, amount, channel, CAST(ts AS DATE) AS d FROM {events}
),
bounds AS (SELECT MIN(d) + 1 AS lo, MAX(d) + 1 AS hi FROM ev),
daily AS (
    SELECT merchant_id, d, SUM(amount) AS s, SUM(CASE WHEN channel = 'web' THEN amount ELSE 0 END) AS w,
           COUNT(*) AS c
    FROM ev GROUP BY ALL
),
span AS (
    SELECT merchant_id, MIN(d) AS first_d, MAX(d) AS last_d FROM daily GROUP BY ALL
),
calendar AS (
    SELECT merchant_id, CAST(g.day AS DATE) AS d
    FROM span, bounds,
         LATERAL generate_series(first_d, LEAST(last_d + 30, bounds.hi - 1), INTERVAL 1 DAY) AS g(day)
),
dense AS (
    SELECT c.merchant_id, c.d, COALESCE(x.s, 0) AS s, COALESCE(x.w, 0) AS w, COALESCE(x.c, 0) AS n
    FROM calendar c LEFT JOIN daily x USING (merchant_id, d)
),
windows AS (
    SELECT merchant_id, d + 1 AS as_of_day,
        SUM(s) OVER w7 AS revenue_7d, SUM(s) OVER w30 AS revenue_30d, SUM(w) OVER w30 AS web_revenue_30d,
        SUM(n) OVER w30 AS tx_count_30d
    FROM dense
    WINDOW w7 AS (PARTITION BY merchant_id ORDER BY d ROWS BETWEEN 6 PRECEDING AND CURRENT ROW),
           w30 AS (PARTITION BY merchant_id ORDER BY d ROWS BETWEEN 29 PRECEDING AND CURRENT ROW)
),
seen AS (SELECT DISTINCT merchant_id, user_id, d FROM ev),
cover AS (
    SELECT merchant_id, d + 1 AS start_day,
           LEAST(d + 30, COALESCE(LEAD(d) OVER (PARTITION BY merchant_id, user_id ORDER BY d), d + 30)) AS end_day
    FROM seen
),
edges AS (
    SELECT merchant_id, start_day AS day, 1 AS delta FROM cover
    UNION ALL SELECT merchant_id, end_day + 1, -1 FROM cover
),
delta AS (SELECT merchant_id, day, SUM(delta) AS delta FROM edges GROUP BY ALL),
distinct_users AS (
    SELECT w.merchant_id, w.as_of_day,
           SUM(COALESCE(delta.delta, 0)) OVER (PARTITION BY w.merchant_id ORDER BY w.as_of_day
                                               ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS du
    FROM windows w LEFT JOIN delta ON delta.merchant_id = w.merchant_id AND delta.day = w.as_of_day
)
SELECT w.merchant_id,
       CAST(w.as_of_day AS TIMESTAMPTZ) AS as_of,
       CAST(w.revenue_7d AS DOUBLE) AS revenue_7d, CAST(w.revenue_30d AS DOUBLE) AS revenue_30d,
       CAST(w.web_revenue_30d AS DOUBLE) AS web_revenue_30d,
       du.du::BIGINT AS unique_customers_30d,
       CASE WHEN w.revenue_30d <> 0 THEN CAST(w.web_revenue_30d AS DOUBLE) / CAST(w.revenue_30d AS DOUBLE) END
           AS web_share_30d
FROM windows w
JOIN distinct_users du USING (merchant_id, as_of_day)
JOIN bounds ON w.as_of_day BETWEEN bounds.lo AND bounds.hi
WHERE w.tx_count_30d > 0
"""
