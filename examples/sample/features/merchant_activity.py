"""Daily activity features per merchant: revenue, reach and channel mix as of a day."""

from features.declarations import Derived, Entity, FeatureSet, Filter, WindowAggregation

merchant = Entity(name="merchant", join_key="merchant_id", dtype="int64", description="A merchant paid by users")


def web_share_30d(web_revenue_30d, revenue_30d):
    """Share of the last 30 days' revenue that came through the web channel (null without revenue)."""
    return (web_revenue_30d / revenue_30d.where(revenue_30d != 0)).astype("float64")


FEATURE_SET = FeatureSet(
    name="merchant_activity",
    entity=merchant,
    source_table="transactions",
    timestamp_column="ts",
    description="Revenue and reach of a merchant over trailing windows, one row per merchant per as-of day.",
    aggregations=(
        WindowAggregation("revenue", "amount", "sum", ("7d", "30d"), "float64", "Revenue received"),
        WindowAggregation("web_revenue", "amount", "sum", ("30d",), "float64", "Revenue received",
                          where=Filter("channel", "web")),
        WindowAggregation("unique_customers", "user_id", "count_distinct", ("30d",), "int64",
                          "Number of distinct paying users"),
    ),
    derived=(Derived("web_share_30d", web_share_30d, "float64", "Share of 30-day revenue from the web channel"),),
)
