//! Parsing of `pvs`/`vgs`/`lvs --reportformat json --units b --nosuffix`.
//!
//! LVM prints every field as a JSON string (sizes too), inside
//! `{"report": [{"pv": [...]}]}`. The parsers take exactly the fields that
//! [`super::PV_FIELDS`], [`super::VG_FIELDS`] and [`super::LV_FIELDS`] ask
//! for, and refuse a report that lacks one: a silently missing field would
//! turn into a zero size or an empty tag list, which is worse than an error.

use serde_json::Value;

/// A physical volume as `pvs` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvInfo {
    /// The device path as LVM names it (`/dev/mapper/<wwid>`).
    pub name: String,
    pub uuid: String,
    /// Bytes usable for extents.
    pub size: u64,
    /// Bytes of the whole device.
    pub dev_size: u64,
    /// Empty when the PV belongs to no VG.
    pub vg_name: String,
    pub vg_uuid: String,
    /// Byte offset of the first extent on the device.
    pub pe_start: u64,
    pub pe_count: u64,
    pub pe_alloc_count: u64,
    pub mda_count: u64,
    /// Metadata areas in use: VDSM makes two on every PV of a domain and
    /// uses them on one only, which holds the VG's metadata.
    pub mda_used_count: u64,
    pub mda_size: u64,
}

/// A volume group as `vgs` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VgInfo {
    pub name: String,
    pub uuid: String,
    pub attr: String,
    pub size: u64,
    pub free: u64,
    pub extent_size: u64,
    pub extent_count: u64,
    pub free_count: u64,
    pub tags: Vec<String>,
    pub mda_size: u64,
    pub mda_free: u64,
    pub pv_count: u64,
    pub lv_count: u64,
}

impl VgInfo {
    /// Whether the VG is partial (a PV is missing): `vg_attr` column 4.
    pub fn is_partial(&self) -> bool {
        self.attr.as_bytes().get(3) == Some(&b'p')
    }
}

/// A logical volume as `lvs` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvInfo {
    pub vg_name: String,
    pub name: String,
    pub uuid: String,
    pub size: u64,
    /// `lv_attr`, e.g. `-wi-a-----`.
    pub attr: String,
    pub tags: Vec<String>,
    /// `devices`, e.g. `/dev/mapper/36001...(8)`: the PVs and first extents.
    pub devices: String,
}

impl LvInfo {
    /// Whether the LV is active: `lv_attr` column 5 is `a`. (Without
    /// device-mapper LVM prints `X`, unknown, which is not active.)
    pub fn is_active(&self) -> bool {
        self.attr.as_bytes().get(4) == Some(&b'a')
    }

    /// The tag starting with `prefix`, without the prefix.
    pub fn tag_value(&self, prefix: &str) -> Option<&str> {
        self.tags.iter().find_map(|t| t.strip_prefix(prefix))
    }
}

/// Why a report could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad LVM report: {0}")]
pub struct ReportError(pub String);

fn rows<'a>(v: &'a Value, kind: &str) -> Result<Vec<&'a Value>, ReportError> {
    let reports = v
        .get("report")
        .and_then(Value::as_array)
        .ok_or_else(|| ReportError("no \"report\" array".into()))?;
    let mut out = Vec::new();
    for r in reports {
        if let Some(items) = r.get(kind).and_then(Value::as_array) {
            out.extend(items.iter());
        }
    }
    Ok(out)
}

struct Row<'a>(&'a Value);

impl Row<'_> {
    fn s(&self, key: &str) -> Result<String, ReportError> {
        self.0
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| ReportError(format!("field {key} missing")))
    }

    fn n(&self, key: &str) -> Result<u64, ReportError> {
        let s = self.s(key)?;
        // An empty number is LVM's "not applicable" (e.g. pe_start of a
        // device that is not a PV); zero is the honest reading of it.
        if s.is_empty() {
            return Ok(0);
        }
        s.parse()
            .map_err(|_| ReportError(format!("field {key}={s:?} is not a number of bytes")))
    }

    fn tags(&self, key: &str) -> Result<Vec<String>, ReportError> {
        Ok(self
            .s(key)?
            .split(',')
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect())
    }
}

fn parse(text: &str) -> Result<Value, ReportError> {
    // LVM may print warnings before the JSON on stdout in old versions;
    // start at the first brace.
    let start = text
        .find('{')
        .ok_or_else(|| ReportError("no JSON in the output".into()))?;
    serde_json::from_str(&text[start..]).map_err(|e| ReportError(e.to_string()))
}

pub fn parse_pvs(text: &str) -> Result<Vec<PvInfo>, ReportError> {
    let v = parse(text)?;
    rows(&v, "pv")?
        .into_iter()
        .map(|r| {
            let r = Row(r);
            Ok(PvInfo {
                name: r.s("pv_name")?,
                uuid: r.s("pv_uuid")?,
                size: r.n("pv_size")?,
                dev_size: r.n("dev_size")?,
                vg_name: r.s("vg_name")?,
                vg_uuid: r.s("vg_uuid")?,
                pe_start: r.n("pe_start")?,
                pe_count: r.n("pv_pe_count")?,
                pe_alloc_count: r.n("pv_pe_alloc_count")?,
                mda_count: r.n("pv_mda_count")?,
                mda_used_count: r.n("pv_mda_used_count")?,
                mda_size: r.n("pv_mda_size")?,
            })
        })
        .collect()
}

pub fn parse_vgs(text: &str) -> Result<Vec<VgInfo>, ReportError> {
    let v = parse(text)?;
    rows(&v, "vg")?
        .into_iter()
        .map(|r| {
            let r = Row(r);
            Ok(VgInfo {
                name: r.s("vg_name")?,
                uuid: r.s("vg_uuid")?,
                attr: r.s("vg_attr")?,
                size: r.n("vg_size")?,
                free: r.n("vg_free")?,
                extent_size: r.n("vg_extent_size")?,
                extent_count: r.n("vg_extent_count")?,
                free_count: r.n("vg_free_count")?,
                tags: r.tags("vg_tags")?,
                mda_size: r.n("vg_mda_size")?,
                mda_free: r.n("vg_mda_free")?,
                pv_count: r.n("pv_count")?,
                lv_count: r.n("lv_count")?,
            })
        })
        .collect()
}

pub fn parse_lvs(text: &str) -> Result<Vec<LvInfo>, ReportError> {
    let v = parse(text)?;
    rows(&v, "lv")?
        .into_iter()
        .map(|r| {
            let r = Row(r);
            Ok(LvInfo {
                vg_name: r.s("vg_name")?,
                name: r.s("lv_name")?,
                uuid: r.s("lv_uuid")?,
                size: r.n("lv_size")?,
                attr: r.s("lv_attr")?,
                tags: r.tags("lv_tags")?,
                devices: r.s("devices")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from lvm2 2.03.16 on a loop device (activation disabled);
    // pv_mda_used_count as the same version prints it.
    const PVS: &str = r#"  {
      "report": [
          {
              "pv": [
                  {"pv_name":"/dev/loop0", "pv_uuid":"E2YkMo-oJm4-TkLR-jDRN-Asdy-wtbB-w51BMq", "pv_size":"2013265920", "dev_size":"2147483648", "vg_name":"testvg", "vg_uuid":"3edLI6-piVk-D4YY-Tnnd-HrJY-KGsq-dZq3C6", "pe_start":"1048576", "pv_pe_count":"15", "pv_pe_alloc_count":"2", "pv_mda_count":"1", "pv_mda_used_count":"1", "pv_mda_size":"1044480"}
              ]
          }
      ]
  }"#;
    const VGS: &str = r#"{"report": [{"vg": [{"vg_name":"testvg", "vg_uuid":"3edLI6-piVk-D4YY-Tnnd-HrJY-KGsq-dZq3C6", "vg_attr":"wz--n-", "vg_size":"2013265920", "vg_free":"1744830464", "vg_extent_size":"134217728", "vg_extent_count":"15", "vg_free_count":"13", "vg_tags":"MDT_A=b&44&c,RHAT_storage_domain", "vg_mda_size":"1044480", "vg_mda_free":"519680", "pv_count":"1", "lv_count":"1"}]}]}"#;
    const LVS: &str = r#"{"report": [{"lv": [{"vg_name":"testvg", "lv_name":"lv1", "lv_uuid":"8unSLn", "lv_size":"268435456", "lv_attr":"-wi-a-----", "lv_tags":"IU_x,MD_3", "devices":"/dev/loop0(0)"}, {"vg_name":"testvg", "lv_name":"lv2", "lv_uuid":"9", "lv_size":"134217728", "lv_attr":"-wi-XX----", "lv_tags":"", "devices":"/dev/loop0(2)"}]}]}"#;

    #[test]
    fn pvs_fields() {
        let pvs = parse_pvs(PVS).unwrap();
        assert_eq!(pvs.len(), 1);
        assert_eq!(pvs[0].name, "/dev/loop0");
        assert_eq!(pvs[0].pe_start, 1 << 20);
        assert_eq!(pvs[0].dev_size, 2 << 30);
        assert_eq!(pvs[0].pe_alloc_count, 2);
        assert_eq!(pvs[0].mda_used_count, 1);
    }

    #[test]
    fn vgs_tags_split_on_commas() {
        let vgs = parse_vgs(VGS).unwrap();
        assert_eq!(vgs[0].tags, ["MDT_A=b&44&c", "RHAT_storage_domain"]);
        assert_eq!(vgs[0].extent_size, 128 << 20);
        assert!(!vgs[0].is_partial());
    }

    #[test]
    fn lvs_activity_and_tags() {
        let lvs = parse_lvs(LVS).unwrap();
        assert!(lvs[0].is_active());
        assert!(!lvs[1].is_active(), "X (unknown) is not active");
        assert_eq!(lvs[0].tag_value("MD_"), Some("3"));
        assert!(lvs[1].tags.is_empty());
    }

    #[test]
    fn missing_field_is_an_error_not_a_zero() {
        let text = r#"{"report":[{"lv":[{"vg_name":"v","lv_name":"l"}]}]}"#;
        assert!(parse_lvs(text).unwrap_err().0.contains("lv_uuid"));
        assert!(parse_lvs("not json").is_err());
    }

    #[test]
    fn empty_report_is_empty() {
        assert!(parse_vgs(r#"{"report":[{"vg":[]}]}"#).unwrap().is_empty());
    }
}
