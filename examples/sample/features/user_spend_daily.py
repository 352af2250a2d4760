"""Daily spend features per user: what a fraud or churn model reads about a user as of a day."""

from features.declarations import Attribute, Entity, FeatureSet, WindowAggregation

user = Entity(name="user", join_key="user_id", dtype="int64", description="A customer of the platform")

FEATURE_SET = FeatureSet(
    name="user_spend_daily",
    entity=user,
    source_table="transactions",
    timestamp_column="ts",
    entity_table="users",
    description="Spend of a user over trailing windows, one row per user per as-of day (midnight UTC).",
    aggregations=(
        WindowAggregation("spend", "amount", "sum", ("7d", "30d", "90d"), "float64",
                          "Sum of transaction amounts, 0 when none"),
        WindowAggregation("tx_count", None, "count", ("7d", "30d", "90d"), "int64",
                          "Number of valid transactions"),
        WindowAggregation("avg_amount", "amount", "mean", ("30d",), "float64",
                          "Mean transaction amount, null when there is none"),
        WindowAggregation("distinct_merchants", "merchant_id", "count_distinct", ("30d",), "int64",
                          "Number of distinct merchants paid"),
        WindowAggregation("days_since_last_tx", None, "days_since_last", ("90d",), "int64",
                          "Whole days from the date of the last transaction to the as-of date (>= 1)",
                          suffix_window=False),
    ),
    attributes=(
        Attribute("tenure_days", "signup_ts", "int64", "Days from the signup date to the as-of date",
                  transform="days_until_as_of"),
        Attribute("country", "country", "string", "Country of residence (ISO-3166 alpha-2)"),
    ),
)
