//! The HorizontalPodAutoscaler's replica calculator, as pure functions: what the HPA
//! controller of kube-controller-manager would decide from the adapter's answers.
//!
//! Faithful to `pkg/controller/podautoscaler/replica_calculator.go`,
//! `pkg/controller/podautoscaler/metrics/{client.go,utilization.go}` and
//! `computeReplicasForMetrics`/`reconcileAutoscaler` in `horizontal.go` (current Kubernetes,
//! with `Tolerances`):
//!
//! - every value is an int64 of milli-units, `Quantity.MilliValue()`: the exact decimal times
//!   1000, rounded away from zero ([`milli_value`]);
//! - a ratio is within tolerance when `1 - scaleDown ≤ ratio ≤ 1 + scaleUp` (both 0.1 by
//!   default, `--horizontal-pod-autoscaler-tolerance`; per HPA since v1.33) ([`Tolerances`]);
//! - Pods / AverageValue ([`pods_average_value`]): the average is the **integer** mean of
//!   every item the adapter returned (`GetMetricUsageRatio`: `total / len`, truncated), over
//!   the pods the HPA's selector lists grouped as `groupPods` does (deleting or failed:
//!   ignored; pending: unready; no metric: missing); missing pods count as the target on a
//!   scale-down and as 0 on a scale-up, unready ones as 0 on a scale-up, and the result is
//!   kept when the rebalanced ratio is within tolerance or flips direction;
//! - Object and External, Value and AverageValue ([`object_value`], [`object_average_value`],
//!   [`external_value`], [`external_average_value`]); External sums every item (saturating,
//!   as the controller caps the sum at MaxInt64);
//! - several metrics: the largest proposal; no scaling at all when every metric is invalid,
//!   or when some is invalid and the largest valid proposal would scale down
//!   (`computeReplicasForMetrics`, condition `ScalingActive=False`) ([`recommend`]);
//! - `reconcileAutoscaler`'s order: `spec.replicas == 0` disables autoscaling, a count above
//!   `maxReplicas` or below `minReplicas` is brought into range without reading metrics,
//!   otherwise the metrics' recommendation is clamped to `[minReplicas, maxReplicas]`.
//!
//! Not modelled (time-dependent, out of one calculation's reach): the behaviour's
//! stabilization windows (scale-down looks at the highest recommendation of the last 5
//! minutes) and rate policies (at most +100% or +4 pods, and -100%, per 15 s), and the CPU
//! readiness rules, which only apply to the `cpu` resource.
//!
//! The adapter's JSON answers become the calculator's inputs with [`pod_metrics`],
//! [`object_metric`] and [`external_metrics`], which fail exactly where the HPA's metrics
//! client fails (an empty list is "no metrics returned").

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::promadapter::quantity_decimal;

/// The default tolerance of both directions (`--horizontal-pod-autoscaler-tolerance`).
pub const DEFAULT_TOLERANCE: f64 = 0.1;

/// `Quantity.MilliValue()` of a Quantity string: its exact decimal value times 1000, rounded
/// away from zero (apimachinery's `negativeScaleInt64` and `inf.RoundUp`), saturated to
/// int64 (the adapter clamps far earlier, at ±9.2e15).
///
/// # Errors
/// When `q` is not a DecimalSI quantity (see [`quantity_decimal`]).
pub fn milli_value(q: &str) -> Result<i64> {
    let (mantissa, exponent) = quantity_decimal(q)?;
    let scale = exponent + 3;
    let milli: i128 = if scale >= 0 {
        let factor = 10i128
            .checked_pow(u32::try_from(scale).unwrap_or(u32::MAX))
            .unwrap_or(i128::MAX);
        mantissa.saturating_mul(factor)
    } else {
        let divisor = 10i128.checked_pow(scale.unsigned_abs());
        match divisor {
            // More than 38 decimal places below milli: anything non-zero rounds to ±1.
            None => mantissa.signum(),
            Some(d) => {
                let (q, r) = (mantissa / d, mantissa % d);
                if r == 0 { q } else { q + mantissa.signum() }
            }
        }
    };
    Ok(i64::try_from(milli).unwrap_or(if milli > 0 { i64::MAX } else { i64::MIN }))
}

/// The scale-up and scale-down tolerances (`spec.behavior.scaleUp/scaleDown.tolerance`,
/// default [`DEFAULT_TOLERANCE`] each).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerances {
    /// How far below 1 a ratio may be without scaling down.
    pub scale_down: f64,
    /// How far above 1 a ratio may be without scaling up.
    pub scale_up: f64,
}

impl Default for Tolerances {
    fn default() -> Self {
        Tolerances {
            scale_down: DEFAULT_TOLERANCE,
            scale_up: DEFAULT_TOLERANCE,
        }
    }
}

impl Tolerances {
    /// `tolerances.isWithin(ratio)`: `1 - scaleDown ≤ ratio ≤ 1 + scaleUp`.
    pub fn is_within(&self, ratio: f64) -> bool {
        (1.0 - self.scale_down) <= ratio && ratio <= (1.0 + self.scale_up)
    }
}

/// What the HPA's pod lister knows of a pod of the scale target (its selector's pods).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// `metadata.name`.
    pub name: String,
    /// `status.phase`, and whether it is being deleted.
    pub state: PodState,
}

/// The parts of a pod's status `groupPods` looks at (for metrics other than `cpu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodState {
    /// `Running` (for a non-CPU metric the readiness condition does not matter).
    Running,
    /// `Pending`: unready; counted as 0 on a scale-up.
    Pending,
    /// `Failed`: ignored.
    Failed,
    /// `deletionTimestamp` set: ignored.
    Deleting,
}

impl Pod {
    /// A running pod.
    pub fn running(name: &str) -> Pod {
        Pod {
            name: name.to_owned(),
            state: PodState::Running,
        }
    }

    /// A pod in `state`.
    pub fn new(name: &str, state: PodState) -> Pod {
        Pod {
            name: name.to_owned(),
            state,
        }
    }
}

/// Why a metric gives no proposal (the HPA's condition reason and message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `groupPods`: how many selected pods are ready with a metric, and which are unready
/// (pending), missing (no metric) or ignored (deleting, failed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodGroups {
    /// Running pods the adapter returned a value for.
    pub ready: usize,
    /// Pending pods.
    pub unready: BTreeSet<String>,
    /// Running pods without a value.
    pub missing: BTreeSet<String>,
    /// Deleting or failed pods.
    pub ignored: BTreeSet<String>,
}

/// `groupPods` for a metric other than `cpu`.
pub fn group_pods(pods: &[Pod], metrics: &BTreeMap<String, i64>) -> PodGroups {
    let mut groups = PodGroups::default();
    for pod in pods {
        match pod.state {
            PodState::Deleting | PodState::Failed => {
                groups.ignored.insert(pod.name.clone());
            }
            PodState::Pending => {
                groups.unready.insert(pod.name.clone());
            }
            PodState::Running if !metrics.contains_key(&pod.name) => {
                groups.missing.insert(pod.name.clone());
            }
            PodState::Running => groups.ready += 1,
        }
    }
    groups
}

/// `GetMetricUsageRatio`: the integer mean of `metrics` (truncated, as Go's int64 division)
/// over `target`, and that mean.
fn usage_ratio(metrics: &BTreeMap<String, i64>, target: i64) -> (f64, i64) {
    let total: i128 = metrics.values().map(|v| i128::from(*v)).sum();
    let len = i128::try_from(metrics.len()).unwrap_or(i128::MAX).max(1);
    let mean = i64::try_from(total / len).unwrap_or(i64::MAX);
    (mean as f64 / target as f64, mean)
}

fn ceil_replicas(x: f64) -> i32 {
    // Go's int32(math.Ceil(x)); the values here are far from the int32 limits.
    x.ceil() as i32
}

/// Pods metric, AverageValue target (`GetMetricReplicas` → `calcPlainMetricReplicas`).
///
/// `metrics` is the adapter's answer by pod name (every item, also of pods the selector
/// doesn't list: the HPA keeps them); `pods` is what the HPA's selector lists.
///
/// # Errors
/// "no pods returned by selector" when `pods` is empty; "did not receive metrics for any
/// ready pods" when nothing is left after removing the unready and ignored pods' values.
pub fn pods_average_value(
    current_replicas: i32,
    target: i64,
    metrics: &BTreeMap<String, i64>,
    pods: &[Pod],
    tolerances: Tolerances,
) -> Result<i32, Invalid> {
    if pods.is_empty() {
        return Err(Invalid(
            "no pods returned by selector while calculating replica count".to_owned(),
        ));
    }
    let groups = group_pods(pods, metrics);
    let mut metrics = metrics.clone();
    // removeMetricsForPods(metrics, ignoredPods); removeMetricsForPods(metrics, unreadyPods)
    for name in groups.ignored.iter().chain(&groups.unready) {
        metrics.remove(name);
    }
    if metrics.is_empty() {
        return Err(Invalid(
            "did not receive metrics for any ready pods".to_owned(),
        ));
    }
    let (ratio, _) = usage_ratio(&metrics, target);
    let rebalance_unready = !groups.unready.is_empty() && ratio > 1.0;
    if !rebalance_unready && groups.missing.is_empty() {
        if tolerances.is_within(ratio) {
            return Ok(current_replicas);
        }
        return Ok(ceil_replicas(ratio * groups.ready as f64));
    }
    if !groups.missing.is_empty() {
        // Scale-down: missing pods use the target; otherwise (scale-up, or exactly 1) 0.
        let fill = if ratio < 1.0 { target } else { 0 };
        for name in &groups.missing {
            metrics.insert(name.clone(), fill);
        }
    }
    if rebalance_unready {
        for name in &groups.unready {
            metrics.insert(name.clone(), 0);
        }
    }
    let (new_ratio, _) = usage_ratio(&metrics, target);
    if tolerances.is_within(new_ratio)
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok(current_replicas);
    }
    let new_replicas = ceil_replicas(new_ratio * metrics.len() as f64);
    if (new_ratio < 1.0 && new_replicas > current_replicas)
        || (new_ratio > 1.0 && new_replicas < current_replicas)
    {
        return Ok(current_replicas);
    }
    Ok(new_replicas)
}

/// `getUsageRatioReplicaCount`: within tolerance keeps `current_replicas`, else
/// `ceil(ratio × readyPods)`; from zero replicas (scale to zero enabled) `ceil(ratio)`.
fn usage_ratio_replicas(
    current_replicas: i32,
    ready_pods: usize,
    ratio: f64,
    tolerances: Tolerances,
) -> i32 {
    if current_replicas == 0 {
        return ceil_replicas(ratio);
    }
    if tolerances.is_within(ratio) {
        return current_replicas;
    }
    ceil_replicas(ratio * ready_pods as f64)
}

/// Object metric, Value target (`GetObjectMetricReplicas`): `ratio = value / target`.
/// `ready_pods` counts the selector's running and ready pods (`getReadyPodsCount`).
pub fn object_value(
    current_replicas: i32,
    ready_pods: usize,
    value: i64,
    target: i64,
    tolerances: Tolerances,
) -> i32 {
    usage_ratio_replicas(
        current_replicas,
        ready_pods,
        value as f64 / target as f64,
        tolerances,
    )
}

/// Object metric, AverageValue target (`GetObjectPerPodMetricReplicas`):
/// `ratio = value / (target × statusReplicas)`; outside tolerance `ceil(value / target)`.
pub fn object_average_value(
    status_replicas: i32,
    value: i64,
    target_average: i64,
    tolerances: Tolerances,
) -> i32 {
    per_pod_replicas(status_replicas, value, target_average, tolerances)
}

fn per_pod_replicas(status_replicas: i32, usage: i64, target_average: i64, t: Tolerances) -> i32 {
    let ratio = usage as f64 / (target_average as f64 * f64::from(status_replicas));
    if t.is_within(ratio) {
        status_replicas
    } else {
        ceil_replicas(usage as f64 / target_average as f64)
    }
}

/// The sum of every External item, capped at MaxInt64 as the controller caps it.
pub fn external_sum(values: &[i64]) -> i64 {
    values.iter().fold(0i64, |sum, v| sum.saturating_add(*v))
}

/// External metric, Value target (`GetExternalMetricReplicas`): `ratio = Σ items / target`,
/// then as [`object_value`].
pub fn external_value(
    current_replicas: i32,
    ready_pods: usize,
    values: &[i64],
    target: i64,
    tolerances: Tolerances,
) -> i32 {
    usage_ratio_replicas(
        current_replicas,
        ready_pods,
        external_sum(values) as f64 / target as f64,
        tolerances,
    )
}

/// External metric, AverageValue target (`GetExternalPerPodMetricReplicas`):
/// `ratio = Σ items / (target × statusReplicas)`; outside tolerance `ceil(Σ / target)`.
pub fn external_average_value(
    status_replicas: i32,
    values: &[i64],
    target_average: i64,
    tolerances: Tolerances,
) -> i32 {
    per_pod_replicas(
        status_replicas,
        external_sum(values),
        target_average,
        tolerances,
    )
}

/// One metric of an HPA's `spec.metrics` with what the adapter answered for it: the
/// calculator's input.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricInput {
    /// `type: Pods`, `target.averageValue` (milli), and the values by pod name.
    PodsAverageValue {
        /// `target.averageValue` in milli-units.
        target: i64,
        /// The answer's items by `describedObject.name`.
        values: BTreeMap<String, i64>,
    },
    /// `type: Object`, `target.value`.
    ObjectValue {
        /// `target.value` in milli-units.
        target: i64,
        /// The object's value.
        value: i64,
    },
    /// `type: Object`, `target.averageValue`.
    ObjectAverageValue {
        /// `target.averageValue` in milli-units.
        target: i64,
        /// The object's value.
        value: i64,
    },
    /// `type: External`, `target.value`.
    ExternalValue {
        /// `target.value` in milli-units.
        target: i64,
        /// Every item's value.
        values: Vec<i64>,
    },
    /// `type: External`, `target.averageValue`.
    ExternalAverageValue {
        /// `target.averageValue` in milli-units.
        target: i64,
        /// Every item's value.
        values: Vec<i64>,
    },
    /// The metric could not be read (the adapter answered an error, or nothing).
    Unavailable(String),
}

/// The scale target as the HPA sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleTarget {
    /// `scale.spec.replicas` (also used as `status.replicas`: a settled workload).
    pub replicas: i32,
    /// The pods the HPA's selector lists.
    pub pods: Vec<Pod>,
}

impl ScaleTarget {
    /// `replicas` running pods named `names`.
    pub fn running(names: &[&str]) -> ScaleTarget {
        ScaleTarget {
            replicas: i32::try_from(names.len()).unwrap_or(i32::MAX),
            pods: names.iter().map(|n| Pod::running(n)).collect(),
        }
    }

    /// `getReadyPodsCount`: the running pods (for non-CPU metrics, readiness is "Running").
    pub fn ready_pods(&self) -> usize {
        self.pods
            .iter()
            .filter(|p| p.state == PodState::Running)
            .count()
    }
}

/// The HPA's own settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HpaSpec {
    /// `minReplicas` (default 1).
    pub min_replicas: i32,
    /// `maxReplicas`.
    pub max_replicas: i32,
    /// The tolerances.
    pub tolerances: Tolerances,
}

impl HpaSpec {
    /// `min..=max` with the default tolerances.
    pub fn new(min_replicas: i32, max_replicas: i32) -> HpaSpec {
        HpaSpec {
            min_replicas,
            max_replicas,
            tolerances: Tolerances::default(),
        }
    }
}

/// One metric's proposal (`computeReplicasForMetric`).
///
/// # Errors
/// When the metric is [`MetricInput::Unavailable`] or its calculation fails.
pub fn replicas_for_metric(
    input: &MetricInput,
    target: &ScaleTarget,
    tolerances: Tolerances,
) -> Result<i32, Invalid> {
    let current = target.replicas;
    match input {
        MetricInput::PodsAverageValue { target: t, values } => {
            pods_average_value(current, *t, values, &target.pods, tolerances)
        }
        MetricInput::ObjectValue { target: t, value } => Ok(object_value(
            current,
            target.ready_pods(),
            *value,
            *t,
            tolerances,
        )),
        MetricInput::ObjectAverageValue { target: t, value } => {
            Ok(object_average_value(current, *value, *t, tolerances))
        }
        MetricInput::ExternalValue { target: t, values } => Ok(external_value(
            current,
            target.ready_pods(),
            values,
            *t,
            tolerances,
        )),
        MetricInput::ExternalAverageValue { target: t, values } => {
            Ok(external_average_value(current, values, *t, tolerances))
        }
        MetricInput::Unavailable(why) => Err(Invalid(why.clone())),
    }
}

/// What the HPA would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recommendation {
    /// The replica count the HPA would set (before stabilization and rate policies).
    pub replicas: i32,
    /// Each metric's proposal, in `spec.metrics` order.
    pub proposals: Vec<Result<i32, Invalid>>,
    /// Why the HPA holds: every metric invalid, or some invalid and the others would scale
    /// down (`ScalingActive=False`); or autoscaling disabled.
    pub held: Option<String>,
}

/// `computeReplicasForMetrics` (the largest valid proposal; the invalid-metric rule) within
/// `reconcileAutoscaler` (disabled at zero replicas, out-of-range counts brought into range
/// first, the result clamped to `[minReplicas, maxReplicas]`).
pub fn recommend(hpa: &HpaSpec, target: &ScaleTarget, metrics: &[MetricInput]) -> Recommendation {
    let current = target.replicas;
    if current == 0 && hpa.min_replicas != 0 {
        return Recommendation {
            replicas: 0,
            proposals: Vec::new(),
            held: Some("scaling is disabled since the replica count of the target is zero".into()),
        };
    }
    if current > hpa.max_replicas {
        return Recommendation {
            replicas: hpa.max_replicas,
            proposals: Vec::new(),
            held: None,
        };
    }
    if current < hpa.min_replicas {
        return Recommendation {
            replicas: hpa.min_replicas,
            proposals: Vec::new(),
            held: None,
        };
    }
    let proposals: Vec<Result<i32, Invalid>> = metrics
        .iter()
        .map(|m| replicas_for_metric(m, target, hpa.tolerances))
        .collect();
    let mut largest = 0;
    let mut first_invalid: Option<&Invalid> = None;
    let mut invalid = 0;
    for proposal in &proposals {
        match proposal {
            Ok(r) => {
                if largest == 0 || *r > largest {
                    largest = *r;
                }
            }
            Err(e) => {
                first_invalid.get_or_insert(e);
                invalid += 1;
            }
        }
    }
    if invalid >= metrics.len() || (invalid > 0 && largest < current) {
        let why = first_invalid.map_or_else(
            || "the HPA has no metrics".to_owned(),
            |e| {
                format!(
                    "invalid metrics ({invalid} of {}), first: {e}",
                    metrics.len()
                )
            },
        );
        return Recommendation {
            replicas: current,
            proposals,
            held: Some(why),
        };
    }
    Recommendation {
        replicas: largest.clamp(hpa.min_replicas, hpa.max_replicas),
        proposals,
        held: None,
    }
}

// ------------------------------------------------------------------------------------------
// The adapter's answers

fn items(list: &Value, kind: &str) -> Result<Vec<Value>> {
    ensure!(
        list["kind"] == kind,
        "expected a {kind}, got kind {}: {list}",
        list["kind"]
    );
    let items = list["items"]
        .as_array()
        .with_context(|| format!("{kind} without items: {list}"))?;
    Ok(items.clone())
}

fn item_value(item: &Value) -> Result<i64> {
    let q = item["value"]
        .as_str()
        .with_context(|| format!("item without a string value: {item}"))?;
    milli_value(q).with_context(|| format!("value of {item}"))
}

/// A `MetricValueList` (custom.metrics.k8s.io v1beta1 or v1beta2) as `GetRawMetric` reads
/// it: milli-values by `describedObject.name` (a later item of the same name wins).
///
/// # Errors
/// When it is not a MetricValueList, an item has no name or value, or there are no items
/// ("no metrics returned from custom metrics API", which makes the metric invalid).
pub fn pod_metrics(list: &Value) -> Result<BTreeMap<String, i64>> {
    let items = items(list, "MetricValueList")?;
    if items.is_empty() {
        bail!("no metrics returned from custom metrics API");
    }
    let mut values = BTreeMap::new();
    for item in &items {
        let name = item["describedObject"]["name"]
            .as_str()
            .with_context(|| format!("item without describedObject.name: {item}"))?;
        values.insert(name.to_owned(), item_value(item)?);
    }
    Ok(values)
}

/// A `MetricValueList` for one object (`GetObjectMetric`): its single item's milli-value.
///
/// # Errors
/// When it is not a MetricValueList with exactly one item.
pub fn object_metric(list: &Value) -> Result<i64> {
    let items = items(list, "MetricValueList")?;
    ensure!(
        items.len() == 1,
        "expected exactly one metric for the object, got {}",
        items.len()
    );
    item_value(&items[0])
}

/// An `ExternalMetricValueList` as `GetExternalMetric` reads it: every item's milli-value.
///
/// # Errors
/// When it is not an ExternalMetricValueList, an item has no value, or there are no items
/// ("no metrics returned from external metrics API").
pub fn external_metrics(list: &Value) -> Result<Vec<i64>> {
    let items = items(list, "ExternalMetricValueList")?;
    if items.is_empty() {
        bail!("no metrics returned from external metrics API");
    }
    items.iter().map(item_value).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
        pairs.iter().map(|(n, v)| ((*n).to_owned(), *v)).collect()
    }

    fn running(names: &[&str]) -> Vec<Pod> {
        names.iter().map(|n| Pod::running(n)).collect()
    }

    const TOL: Tolerances = Tolerances {
        scale_down: DEFAULT_TOLERANCE,
        scale_up: DEFAULT_TOLERANCE,
    };

    #[test]
    fn milli_values_round_away_from_zero() {
        // apimachinery: MilliValue() is ScaledValue(Milli), "rounding up" (away from zero).
        let cases = [
            ("500m", 500),
            ("1", 1000),
            ("1.5", 1500),
            ("2k", 2_000_000),
            ("24233138021n", 24_234),
            ("1n", 1),
            ("1001u", 2),
            ("0", 0),
            ("-1n", -1),
            ("-1500m", -1500),
            ("1e3", 1_000_000),
            ("12500n", 1),
            ("1250000n", 2),
            ("9223372036854775807k", i64::MAX),
        ];
        for (q, want) in cases {
            assert_eq!(milli_value(q).unwrap(), want, "{q}");
        }
        assert!(milli_value("1Ki").is_err());
    }

    #[test]
    fn tolerance_bounds_are_inclusive() {
        // isWithin: (1 - scaleDown) <= ratio <= (1 + scaleUp)
        assert!(TOL.is_within(0.9));
        assert!(TOL.is_within(1.1));
        assert!(!TOL.is_within(0.89));
        assert!(!TOL.is_within(1.11));
        let asym = Tolerances {
            scale_down: 0.5,
            scale_up: 0.0,
        };
        assert!(asym.is_within(0.5) && !asym.is_within(1.01));
    }

    /// calcPlainMetricReplicas, branch by branch (each comment names the controller's rule).
    #[test]
    fn pods_average_value_table() {
        struct Case {
            what: &'static str,
            current: i32,
            target: i64,
            metrics: &'static [(&'static str, i64)],
            pods: Vec<Pod>,
            want: Result<i32, &'static str>,
        }
        let p3 = || running(&["p0", "p1", "p2"]);
        let cases = [
            // No missing or unready pods, outside tolerance: ceil(usageRatio × readyPodCount).
            // 3 pods at 20k/10k/30k, target 15k → mean 20k, ratio 1.333, ceil(4.0) = 4.
            Case {
                what: "scale up",
                current: 3,
                target: 15_000,
                metrics: &[("p0", 20_000), ("p1", 10_000), ("p2", 30_000)],
                pods: p3(),
                want: Ok(4),
            },
            // The same rule downwards: 5 pods at 12k/12k/12k/12k/2k (mean 10k), target 20k →
            // ratio 0.5, ceil(2.5) = 3.
            Case {
                what: "scale down",
                current: 5,
                target: 20_000,
                metrics: &[
                    ("p0", 12_000),
                    ("p1", 12_000),
                    ("p2", 12_000),
                    ("p3", 12_000),
                    ("p4", 2_000),
                ],
                pods: running(&["p0", "p1", "p2", "p3", "p4"]),
                want: Ok(3),
            },
            // tolerances.isWithin(usageRatio) → currentReplicas: mean 20.666k of 20k, 1.033.
            Case {
                what: "within tolerance",
                current: 3,
                target: 20_000,
                metrics: &[("p0", 20_000), ("p1", 21_000), ("p2", 21_000)],
                pods: p3(),
                want: Ok(3),
            },
            // The bounds: ratio exactly 1.1 is still within.
            Case {
                what: "ratio 1.1 is within",
                current: 3,
                target: 10_000,
                metrics: &[("p0", 11_000), ("p1", 11_000), ("p2", 11_000)],
                pods: p3(),
                want: Ok(3),
            },
            // The mean is Go's int64 division: (1 + 1 + 2) / 3 = 1 milli, ratio 1/1 = 1.
            Case {
                what: "integer mean truncates",
                current: 3,
                target: 1,
                metrics: &[("p0", 1), ("p1", 1), ("p2", 2)],
                pods: p3(),
                want: Ok(3),
            },
            // Items for pods outside the selector are not dropped: they count in the mean
            // (and in len(metrics) when rebalancing). Here: mean (10k+10k+10k+50k)/4 = 20k of
            // target 10k, ratio 2, ceil(2 × 3 ready) = 6.
            Case {
                what: "an item outside the selector counts",
                current: 3,
                target: 10_000,
                metrics: &[
                    ("p0", 10_000),
                    ("p1", 10_000),
                    ("p2", 10_000),
                    ("other", 50_000),
                ],
                pods: p3(),
                want: Ok(6),
            },
            // Missing pods on a scale-up use 0 ("treat missing pods as using 0% of the
            // resource request"): 2 pods at 30k, target 10k → ratio 3; rebalanced
            // (30k+30k+0)/3 = 20k, ratio 2, ceil(2 × len(metrics) 3) = 6.
            Case {
                what: "missing pod on a scale-up counts as 0",
                current: 3,
                target: 10_000,
                metrics: &[("p0", 30_000), ("p1", 30_000)],
                pods: p3(),
                want: Ok(6),
            },
            // Missing pods on a scale-down use the target ("treat missing pods as using 100%"):
            // 2 pods at 2k, target 10k → ratio 0.2; rebalanced (2k+2k+10k)/3 = 4.666k, ratio
            // 0.4666, ceil(1.4) = 2.
            Case {
                what: "missing pod on a scale-down counts as the target",
                current: 3,
                target: 10_000,
                metrics: &[("p0", 2_000), ("p1", 2_000)],
                pods: p3(),
                want: Ok(2),
            },
            // "the new usage ratio would cause a change in scale direction" → current: 2 pods
            // at 13k, target 10k → 1.3; rebalanced (13k+13k+0)/3 = 8.666k, ratio 0.866.
            Case {
                what: "rebalancing flips the direction: hold",
                current: 3,
                target: 10_000,
                metrics: &[("p0", 13_000), ("p1", 13_000)],
                pods: p3(),
                want: Ok(3),
            },
            // "the change would be too small" after rebalancing → current: 2 pods at 16k,
            // target 10k → 1.6; (16k+16k+0)/3 = 10.666k, ratio 1.0666.
            Case {
                what: "rebalanced ratio within tolerance: hold",
                current: 3,
                target: 10_000,
                metrics: &[("p0", 16_000), ("p1", 16_000)],
                pods: p3(),
                want: Ok(3),
            },
            // groupPods puts Pending pods in unreadyPods; their values are removed, and on a
            // scale-up they count as 0 (rebalanceIgnored): (30k+30k+0)/3 = 20k of 10k → 6.
            Case {
                what: "pending pod on a scale-up counts as 0",
                current: 3,
                target: 10_000,
                metrics: &[("p0", 30_000), ("p1", 30_000), ("p2", 90_000)],
                pods: vec![
                    Pod::running("p0"),
                    Pod::running("p1"),
                    Pod::new("p2", PodState::Pending),
                ],
                want: Ok(6),
            },
            // On a scale-down an unready pod is just left out: (2k+2k)/2 = 2k of 10k, ratio
            // 0.2, ceil(0.2 × readyPodCount 2) = 1.
            Case {
                what: "pending pod on a scale-down is left out",
                current: 3,
                target: 10_000,
                metrics: &[("p0", 2_000), ("p1", 2_000), ("p2", 2_000)],
                pods: vec![
                    Pod::running("p0"),
                    Pod::running("p1"),
                    Pod::new("p2", PodState::Pending),
                ],
                want: Ok(1),
            },
            // groupPods ignores deleting and failed pods, and their values are removed.
            Case {
                what: "deleting and failed pods are ignored",
                current: 3,
                target: 10_000,
                metrics: &[("p0", 20_000), ("p1", 90_000), ("p2", 90_000)],
                pods: vec![
                    Pod::running("p0"),
                    Pod::new("p1", PodState::Deleting),
                    Pod::new("p2", PodState::Failed),
                ],
                want: Ok(2),
            },
            Case {
                what: "no pods selected",
                current: 3,
                target: 10_000,
                metrics: &[("p0", 1)],
                pods: Vec::new(),
                want: Err("no pods returned by selector while calculating replica count"),
            },
            Case {
                what: "only a pending pod has a value",
                current: 1,
                target: 10_000,
                metrics: &[("p0", 1)],
                pods: vec![Pod::new("p0", PodState::Pending)],
                want: Err("did not receive metrics for any ready pods"),
            },
        ];
        for case in cases {
            let got = pods_average_value(
                case.current,
                case.target,
                &values(case.metrics),
                &case.pods,
                TOL,
            );
            let want = case.want.map_err(|m| Invalid(m.to_owned()));
            assert_eq!(got, want, "{}", case.what);
        }
    }

    #[test]
    fn object_and_external_table() {
        // GetObjectMetricReplicas → getUsageRatioReplicaCount: ceil(value / target × ready).
        assert_eq!(object_value(3, 3, 30_000, 10_000, TOL), 9);
        // Within tolerance: currentReplicas.
        assert_eq!(object_value(3, 3, 20_666, 20_000, TOL), 3);
        // 12k of 20k, 5 ready → ceil(0.6 × 5) = 3.
        assert_eq!(object_value(5, 5, 12_000, 20_000, TOL), 3);
        // Scale from zero (HPAScaleToZero): ceil(ratio) = ceil(3.5) = 4, tolerance ignored.
        assert_eq!(object_value(0, 0, 35_000, 10_000, TOL), 4);
        assert_eq!(object_value(0, 0, 10_500, 10_000, TOL), 2);
        // The ready-pod count, not the replica count, multiplies the ratio.
        assert_eq!(object_value(4, 2, 30_000, 10_000, TOL), 6);
        // GetObjectPerPodMetricReplicas: 40k at 10k per pod, 3 replicas → ratio 1.333 →
        // ceil(40k / 10k) = 4 (the replica count is not a factor).
        assert_eq!(object_average_value(3, 40_000, 10_000, TOL), 4);
        // Within tolerance: 31k for 3 × 10k → 1.033 → hold.
        assert_eq!(object_average_value(3, 31_000, 10_000, TOL), 3);
        // GetExternalMetricReplicas sums the items, then as Object/Value: 8.6k of 4.4k, 3
        // ready → ratio 1.95 → ceil(5.86) = 6; the same sum split over two items.
        assert_eq!(external_value(3, 3, &[8_600], 4_400, TOL), 6);
        assert_eq!(external_value(3, 3, &[4_300, 4_300], 4_400, TOL), 6);
        // Within tolerance: 8.6k of 8.888k → hold.
        assert_eq!(external_value(3, 3, &[8_600], 8_888, TOL), 3);
        // GetExternalPerPodMetricReplicas: Σ 8.6k at 2.2k per pod, 3 replicas → ratio 1.303
        // → ceil(8.6 / 2.2) = 4, whether one item or three.
        assert_eq!(external_average_value(3, &[8_600], 2_200, TOL), 4);
        assert_eq!(
            external_average_value(3, &[3_000, 3_000, 2_600], 2_200, TOL),
            4
        );
        // Σ 8.6k at 3.4k per pod, 5 replicas → ratio 0.506 → ceil(2.53) = 3.
        assert_eq!(external_average_value(5, &[8_600], 3_400, TOL), 3);
        // Within tolerance: 8.6k for 3 × 2.866k → 1.0002 → hold.
        assert_eq!(external_average_value(3, &[8_600], 2_866, TOL), 3);
        // The sum saturates at MaxInt64 instead of wrapping.
        assert_eq!(external_sum(&[i64::MAX, 1]), i64::MAX);
    }

    #[test]
    fn several_metrics_and_the_invalid_metric_rule() {
        let hpa = HpaSpec::new(1, 10);
        let target = ScaleTarget::running(&["p0", "p1", "p2"]);
        let pods_at = |v: i64| MetricInput::PodsAverageValue {
            target: 10_000,
            values: values(&[("p0", v), ("p1", v), ("p2", v)]),
        };
        let external = |sum: i64| MetricInput::ExternalAverageValue {
            target: 10_000,
            values: vec![sum],
        };
        let down = "the adapter answered 503".to_owned();
        struct Case {
            what: &'static str,
            metrics: Vec<MetricInput>,
            want: i32,
            held: bool,
        }
        let cases = [
            // The largest proposal wins: pods want 6, external wants 2.
            Case {
                what: "max over metrics",
                metrics: vec![pods_at(20_000), external(20_000)],
                want: 6,
                held: false,
            },
            Case {
                what: "max over metrics (other order)",
                metrics: vec![external(50_000), pods_at(10_000)],
                want: 5,
                held: false,
            },
            // Some invalid and the others scale up: scale up.
            Case {
                what: "invalid + scale up",
                metrics: vec![MetricInput::Unavailable(down.clone()), pods_at(20_000)],
                want: 6,
                held: false,
            },
            // Some invalid and the others would scale down: no scaling (#644's freeze).
            Case {
                what: "invalid + scale down holds",
                metrics: vec![pods_at(2_000), MetricInput::Unavailable(down.clone())],
                want: 3,
                held: true,
            },
            // Some invalid, the others hold: replicas == current is not below it: holds
            // without the condition.
            Case {
                what: "invalid + hold",
                metrics: vec![pods_at(10_000), MetricInput::Unavailable(down.clone())],
                want: 3,
                held: false,
            },
            Case {
                what: "all invalid",
                metrics: vec![MetricInput::Unavailable(down.clone())],
                want: 3,
                held: true,
            },
            // Clamped to maxReplicas.
            Case {
                what: "clamp to max",
                metrics: vec![pods_at(100_000)],
                want: 10,
                held: false,
            },
            // Clamped to minReplicas.
            Case {
                what: "clamp to min",
                metrics: vec![MetricInput::ExternalValue {
                    target: 10_000,
                    values: vec![0],
                }],
                want: 1,
                held: false,
            },
        ];
        for case in cases {
            let r = recommend(&hpa, &target, &case.metrics);
            assert_eq!(r.replicas, case.want, "{}: {r:?}", case.what);
            assert_eq!(r.held.is_some(), case.held, "{}: {r:?}", case.what);
        }
        // A target above maxReplicas is brought down without metrics, one below
        // minReplicas up; zero replicas disable autoscaling.
        let many = ScaleTarget {
            replicas: 12,
            pods: Vec::new(),
        };
        assert_eq!(recommend(&hpa, &many, &[pods_at(1)]).replicas, 10);
        let few = ScaleTarget {
            replicas: 1,
            pods: Vec::new(),
        };
        assert_eq!(
            recommend(&HpaSpec::new(2, 10), &few, &[pods_at(1)]).replicas,
            2
        );
        let zero = ScaleTarget {
            replicas: 0,
            pods: Vec::new(),
        };
        let r = recommend(&hpa, &zero, &[pods_at(1)]);
        assert_eq!((r.replicas, r.held.is_some()), (0, true));
    }

    #[test]
    fn reads_the_adapters_answers() {
        let pods = json!({"kind":"MetricValueList","apiVersion":"custom.metrics.k8s.io/v1beta2",
            "metadata":{},"items":[
            {"describedObject":{"kind":"Pod","namespace":"shop","name":"web-0","apiVersion":"v1"},
             "metric":{"name":"requests_per_second","selector":null},
             "timestamp":"2026-11-23T15:44:23Z","windowSeconds":60,"value":"500m"},
            {"describedObject":{"kind":"Pod","namespace":"shop","name":"web-1","apiVersion":"v1"},
             "metric":{"name":"requests_per_second","selector":null},
             "timestamp":"2026-11-23T15:44:23Z","windowSeconds":60,"value":"16666667n"}]});
        assert_eq!(
            pod_metrics(&pods).unwrap(),
            values(&[("web-0", 500), ("web-1", 17)])
        );
        assert_eq!(
            object_metric(&json!({"kind":"MetricValueList","items":[{"value":"2k"}]})).unwrap(),
            2_000_000
        );
        let external = json!({"kind":"ExternalMetricValueList",
            "apiVersion":"external.metrics.k8s.io/v1beta1","metadata":{},"items":[
            {"metricName":"queue_depth","metricLabels":{"queue":"a"},"timestamp":"2026-11-23T15:44:23Z","value":"42"},
            {"metricName":"queue_depth","metricLabels":{"queue":"b"},"timestamp":"2026-11-23T15:44:23Z","value":"1500m"}]});
        assert_eq!(external_metrics(&external).unwrap(), vec![42_000, 1_500]);
        // Empty lists are errors, as in the HPA's metrics client.
        let empty = json!({"kind":"MetricValueList","items":[]});
        assert!(format!("{:#}", pod_metrics(&empty).unwrap_err()).contains("no metrics returned"));
        assert!(object_metric(&empty).is_err());
        let empty = json!({"kind":"ExternalMetricValueList","items":[]});
        assert!(external_metrics(&empty).is_err());
        // A Status is not a list.
        let status = json!({"kind":"Status","status":"Failure","code":503});
        assert!(pod_metrics(&status).is_err());
    }
}
