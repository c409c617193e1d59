//! What defines a rollout: the wave, threshold and failure-policy grammars.

use super::*;

#[test]
fn parse_waves_accepts_counts_and_percentages() {
    use WaveSize::{Count, Percent};
    assert_eq!(
        parse_waves("1,10%,50%,100%").unwrap(),
        vec![Count(1), Percent(10), Percent(50), Percent(100)]
    );
    assert_eq!(parse_waves(" 5 , 20 ,100% ").unwrap(), vec![Count(5), Count(20), Percent(100)]);
    assert_eq!(parse_waves("100%").unwrap(), vec![Percent(100)]);
}

#[test]
fn parse_waves_refuses_bad_input_with_a_reason() {
    let refused = |text: &str| parse_waves(text).unwrap_err().to_string();
    assert_eq!(refused(""), "no waves given: write them like 1,10%,50%,100%");
    assert_eq!(refused("0,100%"), "wave \"0\": 0 devices would update no device");
    assert_eq!(refused("0%,100%"), "wave \"0%\": 0% would update no device");
    assert_eq!(refused("50%,101%"), "wave \"101%\": more than 100% of the devices");
    assert_eq!(
        refused("10%,5%,100%"),
        "waves are cumulative and must grow: 5% after 10% adds no device"
    );
    assert_eq!(refused("5,5,100%"), "waves are cumulative and must grow: 5 after 5 adds no device");
    assert_eq!(
        refused("1,50%"),
        "the last wave is 50%, but it must be 100% so the rollout reaches every device; end the list with 100%"
    );
    assert!(refused("1,,100%").contains("empty entry"), "{}", refused("1,,100%"));
    assert!(refused("1,100%,").contains("trailing comma"));
    assert!(refused("one,100%").contains("a device count like 5 or a percentage like 10%"));
    assert!(refused("1.5%,100%").contains("whole number"));
}

#[test]
fn thresholds_and_failure_policies_parse() {
    assert_eq!("5%".parse::<Threshold>().unwrap(), Threshold::Percent(5));
    assert_eq!("3".parse::<Threshold>().unwrap(), Threshold::Count(3));
    assert!("101%".parse::<Threshold>().unwrap_err().to_string().contains("more than 100%"));
    assert!("many".parse::<Threshold>().is_err());
    assert_eq!("Rollback".parse::<OnFailure>().unwrap(), OnFailure::Rollback);
    assert_eq!(
        "retry".parse::<OnFailure>().unwrap_err().to_string(),
        "on failure \"retry\": expected pause or rollback"
    );
}
