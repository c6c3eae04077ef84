//! `Program::from_toml` on arbitrary text: never panics, and a program it accepts is
//! internally consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_model::Program;

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(program) = Program::from_toml(source) else {
        return;
    };
    assert_eq!(program.digest.len(), 64);
    assert_eq!(program.source, source);
    for (id, offer) in &program.offers {
        assert_eq!(&offer.id, id);
        assert!(!offer.goals.is_empty(), "offer {id} has no goals");
        assert!(program.advertiser_of(offer).is_some(), "offer {id} has an unknown advertiser");
        // Template::parse validated the shape with a probe value; any value must keep it.
        let url = url::Url::parse(&offer.destination.render(|_| "x")).expect("destination renders to a URL");
        assert!(matches!(url.scheme(), "http" | "https") && url.host_str().is_some(), "offer {id}: {url}");
    }
    for link in program.links() {
        assert!(program.offer(&link.offer.id).is_some(), "link {} has an unknown offer", link.code);
        assert!(program.affiliates.contains_key(&link.affiliate), "link {} has an unknown affiliate", link.code);
    }
});
