//! Language identification among okapi's 27 languages ([`LANGS`]): hand-written rules, no model,
//! no trained weights. It backs the RL `lang` reward (1 when a completion is in its prompt's
//! language); `docs/language-id.md` gives its measured accuracy and limits.
//!
//! Method:
//! 1. **Script.** Letters are counted per script: Latin, Cyrillic, Arabic, Devanagari, Bengali,
//!    Tamil, Telugu, Kannada, Malayalam, Han, and "other" (Greek, kana, Hangul, …). A Han
//!    ideograph counts twice, as it stands for a syllable where Latin spends several letters. The
//!    script with the most letters decides the candidates: a script of one language decides it
//!    (Arabic → ar, Bengali → bn, Tamil → ta, Malayalam → ml, Telugu → te, Kannada → kn,
//!    Han → zh); "other" gives `None`.
//! 2. **Within a shared script** (Latin: en de fr es it nl vi id hu ro da sk ca hr; Cyrillic:
//!    ru uk sr; Devanagari: hi ne mr) every word (a run of letters of that script, lowercased)
//!    adds to each candidate's score:
//!    - `1/√k` when the word is one of the language's frequent function words and k of the
//!      script's languages list it;
//!    - the language's letter cues found in the word (distinctive letters such as `ő` or `ы`,
//!      letter sequences such as `ij`, suffixes such as `-kan`), at most 1 per word;
//!    - −1 when the word holds a letter the language does not write (`ő` for all but hu, `ы` for
//!      uk and sr, `ळ` for hi and ne), or, for Vietnamese, is not a possible Vietnamese
//!      syllable (`and`, `visited`);
//!    - for Serbian, +0.1 when the word has none of the letters specific to any of ru uk sr:
//!      Russian and Ukrainian words often hold `я ы ь й і`, Serbian ones without `ј љ њ` are
//!      plain.
//!
//!    `¿` and `¡` add 1 to Spanish; a capital `I` alone adds 1 to English only (a lowercase `i`
//!    is Catalan, Croatian, Italian or Danish). The highest score wins; ties go to the first
//!    candidate in [`LANGS`] order (en, ru, hi), so a Latin text with no evidence at all is
//!    called English.
//!
//! [`detect`] gives `None` only when the text has no letter (digits, punctuation, emoji) or when
//! a script none of the languages writes has more of its letters than any other. One letter is
//! enough for an answer, which for a text that short is often a guess.
//!
//! Cost: one pass over the characters, one reused word buffer, a hash look-up and a few dozen
//! short byte comparisons per word and candidate; the tables are built once.
//!
//! ```
//! use okapi_data::langid::{detect, is_lang, known};
//! assert_eq!(detect("Wo ist der nächste Bahnhof?"), Some("de"));
//! assert_eq!(detect("Hvor er den nærmeste togstation?"), Some("da"));
//! assert_eq!(detect("12 + 30 = 42"), None); // no letters: no language
//! assert!(is_lang("Мој брат трчи сваког јутра.", "sr"));
//! assert!(known("kn") && !known("pt"));
//! ```

use std::collections::HashMap;
use std::sync::OnceLock;

/// English plus Okapi's 26 languages, in Okapi's order (Serbian in Cyrillic, Chinese
/// simplified).
pub const LANGS: [&str; 27] = [
    "en", "ru", "de", "zh", "fr", "es", "it", "nl", "vi", "id", "ar", "hu", "ro", "da", "sk", "uk",
    "ca", "sr", "hr", "hi", "bn", "ta", "ne", "ml", "mr", "te", "kn",
];

/// The language of `text`, one of [`LANGS`]; `None` when the text has no letter or its
/// dominant script is one none of the languages writes (see the module docs for the method).
pub fn detect(text: &str) -> Option<&'static str> {
    let tally = Tally::of(text);
    let script = tally.dominant_script()?;
    if let Some(lang) = script.single_language() {
        return Some(lang);
    }
    let mut best: Option<(usize, f32)> = None;
    for (i, p) in PROFILES.iter().enumerate() {
        // Strictly greater: the first candidate in LANGS order wins a tie.
        if p.script == script && best.is_none_or(|(_, s)| tally.scores[i] > s) {
            best = Some((i, tally.scores[i]));
        }
    }
    best.map(|(i, _)| PROFILES[i].lang)
}

/// Whether `text` is detected as `lang` (`detect(text) == Some(lang)`).
pub fn is_lang(text: &str, lang: &str) -> bool {
    detect(text) == Some(lang)
}

/// Whether `lang` is one of [`LANGS`].
pub fn known(lang: &str) -> bool {
    LANGS.contains(&lang)
}

/// The writing systems told apart in step 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Script {
    Latin,
    Cyrillic,
    Devanagari,
    Arabic,
    Bengali,
    Tamil,
    Telugu,
    Kannada,
    Malayalam,
    Han,
    Other,
}

const SCRIPTS: [Script; 11] = [
    Script::Latin,
    Script::Cyrillic,
    Script::Devanagari,
    Script::Arabic,
    Script::Bengali,
    Script::Tamil,
    Script::Telugu,
    Script::Kannada,
    Script::Malayalam,
    Script::Han,
    Script::Other,
];

impl Script {
    /// The one language of a script only one of [`LANGS`] writes.
    fn single_language(self) -> Option<&'static str> {
        match self {
            Script::Arabic => Some("ar"),
            Script::Bengali => Some("bn"),
            Script::Tamil => Some("ta"),
            Script::Telugu => Some("te"),
            Script::Kannada => Some("kn"),
            Script::Malayalam => Some("ml"),
            Script::Han => Some("zh"),
            Script::Latin | Script::Cyrillic | Script::Devanagari | Script::Other => None,
        }
    }

    /// The script of a Unicode block that holds letters, by code point.
    fn of_block(c: char) -> Option<Script> {
        Some(match c as u32 {
            0x0041..=0x024F
            | 0x1E00..=0x1EFF
            | 0x2C60..=0x2C7F
            | 0xA720..=0xA7FF
            | 0xFB00..=0xFB06 => Script::Latin,
            0x0400..=0x052F => Script::Cyrillic,
            0x0900..=0x097F | 0xA8E0..=0xA8FF => Script::Devanagari,
            0x0600..=0x06FF
            | 0x0750..=0x077F
            | 0x08A0..=0x08FF
            | 0xFB50..=0xFDFF
            | 0xFE70..=0xFEFF => Script::Arabic,
            0x0980..=0x09FF => Script::Bengali,
            0x0B80..=0x0BFF => Script::Tamil,
            0x0C00..=0x0C7F => Script::Telugu,
            0x0C80..=0x0CFF => Script::Kannada,
            0x0D00..=0x0D7F => Script::Malayalam,
            0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x3134F => Script::Han,
            _ => return None,
        })
    }
}

/// What a character does to the words being cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// A letter of a script: counted, and part of a word.
    Letter(Script),
    /// Part of the word around it but not a letter: combining accents, Indic vowel killers and
    /// nuktas, zero-width joiners, Catalan's `·` in `l·l`.
    Joiner,
    /// Ends a word: spaces, digits, punctuation (apostrophes too, so `l'eau` is `l` + `eau`).
    Separator,
}

fn classify(c: char) -> Class {
    if c.is_ascii() {
        return if c.is_ascii_alphabetic() {
            Class::Letter(Script::Latin)
        } else {
            Class::Separator
        };
    }
    if matches!(c, '\u{0300}'..='\u{036F}' | '\u{200C}' | '\u{200D}' | '·') {
        return Class::Joiner;
    }
    match Script::of_block(c) {
        Some(s) if c.is_alphabetic() => Class::Letter(s),
        // Digits, dandas and Arabic punctuation live in the blocks too.
        Some(_)
            if c.is_numeric()
                || matches!(
                    c,
                    '\u{0964}'
                        | '\u{0965}'
                        | '\u{0970}'
                        | '\u{060C}'
                        | '\u{061B}'
                        | '\u{061F}'
                        | '\u{06D4}'
                ) =>
        {
            Class::Separator
        }
        Some(_) if is_mark(c) => Class::Joiner,
        Some(_) => Class::Separator,
        None if c.is_alphabetic() => Class::Letter(Script::Other),
        None => Class::Separator,
    }
}

/// Combining marks inside the script blocks (vowel killers, nuktas, harakat, Cyrillic titlos)
/// that `char::is_alphabetic` leaves out.
fn is_mark(c: char) -> bool {
    matches!(c as u32,
        0x0483..=0x0489 | 0x064B..=0x065F | 0x0670 | 0x06D6..=0x06ED | 0x08D3..=0x08FF
        | 0x0900..=0x0903 | 0x093A..=0x094F | 0x0951..=0x0957 | 0x0962 | 0x0963
        | 0x0981..=0x0983 | 0x09BC..=0x09CD | 0x09D7 | 0x0B82 | 0x0BBE..=0x0BCD | 0x0BD7
        | 0x0C00..=0x0C04 | 0x0C3C..=0x0C56 | 0x0C81..=0x0C83 | 0x0CBC..=0x0CD6
        | 0x0D00..=0x0D03 | 0x0D3B..=0x0D4D | 0x0D57)
}

/// Hand-written statistics of one language of a shared script (see the module docs).
struct Profile {
    lang: &'static str,
    script: Script,
    /// Very frequent function words, lowercase, separated by spaces.
    words: &'static str,
    /// Letters this language writes beyond the script's common core (`äöüß` for German). A word
    /// holding a letter some other profile of the script lists here, but this one does not,
    /// counts against this language.
    letters: &'static str,
    /// Core letters this language does not write natively (Croatian has no q, w, x, y).
    absent: &'static str,
    /// Letter cues and their weights: `ab` anywhere in the word, `^ab` at its start, `ab$` at
    /// its end (affixes only match words longer than the affix).
    cues: &'static [(&'static str, f32)],
    /// Punctuation marks that only this language uses (Spanish `¿¡`).
    punct: &'static str,
    /// Added for a word with none of the script's `letters` of any profile: such words are
    /// likelier in Serbian than in Russian or Ukrainian, whose specific letters (я, ы, і, …)
    /// are frequent.
    plain: f32,
}

const fn latin(
    lang: &'static str,
    words: &'static str,
    letters: &'static str,
    cues: &'static [(&'static str, f32)],
) -> Profile {
    Profile {
        lang,
        script: Script::Latin,
        words,
        letters,
        absent: "",
        cues,
        punct: "",
        plain: 0.0,
    }
}

/// English's and Vietnamese's places in [`PROFILES`].
const EN: usize = 0;
const VI: usize = 6;

/// The candidates of the shared scripts, each script's in [`LANGS`] order (ties go to the first).
static PROFILES: [Profile; 20] = [
    latin(
        "en",
        "the and is are was were be been of to in a an that this these those it its for on with as by from at or not no but if than then there their they them you your we our he she his her my me have has had do does did can could will would should may which what who how when where why all any some more most also about into out up one so very just",
        "",
        &[("th", 0.5), ("^wh", 0.6), ("ing$", 0.4), ("ly$", 0.5), ("ay$", 0.3), ("ed$", 0.3), ("ou", 0.2), ("ght", 0.6), ("ould$", 0.8), ("ness$", 0.8), ("ough", 0.8), ("ee", 0.2), ("ea", 0.2), ("ow", 0.2), ("y$", 0.2)],
    ),
    latin(
        "de",
        "der die das den dem des ein eine einen einem einer eines und ist sind war nicht nur auch zu im mit von auf für sich es er sie wir ihr ich du man wird werden wurde kann können muss sollte oder aber wenn dass als wie bei aus nach vor über unter durch um am zum zur noch sehr schon mehr viel was wer hat haben sein ihre seine diese dieser",
        "äöüß",
        &[("ß", 1.0), ("ä", 0.5), ("ö", 0.3), ("ü", 0.3), ("sch", 0.4), ("ung$", 0.6), ("cht", 0.4), ("tz", 0.4), ("ei", 0.3), ("ie", 0.2), ("lich$", 0.6), ("keit$", 0.8), ("heit$", 0.8), ("chen$", 0.5), ("^ge", 0.2), ("eu", 0.2), ("äu", 0.6), ("pf", 0.4), ("nd$", 0.2)],
    ),
    latin(
        "fr",
        "le la les l de des du d un une et est sont en que qu qui dans pour pas ne n sur au aux avec il elle ils elles on nous vous je j ce c cette ces son sa ses leur leurs par plus mais ou où être avoir a été fait se s y très aussi comme tout tous bien peut",
        "àâæçéèêëîïôœùûüÿ",
        &[("œ", 1.0), ("ç", 0.5), ("ê", 0.5), ("è", 0.4), ("à", 0.3), ("â", 0.4), ("î", 0.3), ("û", 0.6), ("ù", 0.6), ("é", 0.3), ("^ré", 0.5), ("ant$", 0.3), ("ui", 0.2), ("eau", 0.6), ("aux$", 0.6), ("eux$", 0.6), ("oi", 0.3), ("ou", 0.3), ("qu", 0.2), ("ais$", 0.5), ("ait$", 0.6), ("ment$", 0.2), ("ée$", 0.8), ("ées$", 0.8)],
    ),
    Profile {
        lang: "es",
        script: Script::Latin,
        words: "el la los las lo de del y e o u es son está están en que un una unos unas por para con sin no se su sus al como más pero también hay ser fue este esta estos estas ese esa le les me mi te ti tu yo nos bien muy mucho mucha muchos cuánto cuántos cuál quién sobre entre cuando puede qué cómo porque hasta",
        letters: "áéíóúüñ",
        absent: "",
        cues: &[("ñ", 1.0), ("ción$", 0.8), ("dad$", 0.6), ("mente$", 0.3), ("ll", 0.2), ("ue", 0.2), ("á", 0.2), ("ó", 0.3), ("í", 0.2), ("ú", 0.2), ("os$", 0.3), ("as$", 0.2), ("o$", 0.1), ("ado$", 0.3), ("ido$", 0.2)],
        punct: "¿¡",
        plain: 0.0,
    },
    latin(
        "it",
        "il lo la i gli le l di del dello della dei degli delle da dal dalla e ed è un uno una che non per con in nel nella nei su sul sulla sono ho hai si ci come più ma anche questo questa quello quella ha hanno essere stato molto o se al alla ai tra fra suo sua loro mi ti",
        "àèéìíîòóùú",
        &[("ì", 0.8), ("ò", 0.4), ("ù", 0.4), ("è", 0.3), ("zione$", 0.8), ("zioni$", 0.8), ("zz", 0.6), ("cch", 0.6), ("gli", 0.5), ("gn", 0.2), ("tt", 0.2), ("ss", 0.2), ("issim", 0.8), ("ato$", 0.3), ("o$", 0.1), ("mente$", 0.3)],
    ),
    latin(
        "nl",
        "de het een en van is zijn in op te dat die dit deze met voor niet er aan ook als om bij toe één maar wordt worden werd door of naar je jij u ik we wij hij zij ze ons hun kan kunnen moet meer heeft hebben had uit over geen nog wat wie hoe waar waarom al dan was veel zo",
        "éëïèóöü",
        &[("ij", 0.8), ("aa", 0.5), ("oe", 0.3), ("uu", 0.5), ("ui", 0.3), ("oo", 0.3), ("ee", 0.2), ("sch", 0.3), ("cht", 0.3), ("heid$", 0.8), ("lijk", 0.8), ("^ge", 0.2), ("ë", 0.5), ("ï", 0.3), ("éé", 1.0), ("ie$", 0.3), ("tje$", 0.8), ("tjes$", 0.8)],
    ),
    latin(
        "vi",
        "và là của có không được những các một cho trong người với này đã để khi thì từ cũng như ra nhưng rất đến về sẽ bạn tôi hay nên vào làm năm mà nó họ chúng ta đó thể nhiều",
        // Plus the tone-marked vowels of U+1EA0..U+1EF9: see `tone_marked`.
        "àáâãèéêìíòóôõùúýăđĩũơư",
        &[("ơ", 1.0), ("ư", 1.0), ("đ", 0.8), ("ă", 0.6), ("ã", 0.8), ("õ", 0.8), ("ĩ", 1.0), ("ũ", 1.0), ("ê", 0.3), ("ô", 0.3), ("â", 0.3), ("\u{0309}", 1.0), ("\u{0323}", 1.0), ("\u{031B}", 1.0), ("^ngh", 0.6), ("^nh", 0.4)],
    ),
    latin(
        "id",
        "yang dan di ke dari untuk dengan ini itu adalah tidak dalam akan pada juga ada atau bisa dapat karena saya kita kami mereka anda kamu sudah lebih seperti oleh harus agar sangat bahwa jika kalau setiap menjadi lagi hari tersebut namun belum masih telah sebagai tetapi hanya semua banyak",
        "",
        &[("ny", 0.3), ("ng", 0.2), ("kan$", 0.8), ("nya$", 0.8), ("^meng", 0.6), ("^mem", 0.4), ("^men", 0.3), ("^ber", 0.4), ("^ter", 0.3), ("^per", 0.3), ("lah$", 0.6), ("an$", 0.2), ("ah$", 0.3), ("^di", 0.1), ("uk$", 0.2)],
    ),
    latin(
        "hu",
        "a az és hogy nem egy is van vannak volt lesz meg de ez azt ezt csak már mint vagy el ki be fel le még kell lehet nagyon ha sem minden amely amelyek ami aki itt ott pedig után között mert akkor így úgy mi te én ő",
        "áéíóöőúüű",
        &[("ő", 1.0), ("ű", 1.0), ("ö", 0.5), ("ü", 0.4), ("ül$", 0.4), ("á", 0.3), ("é", 0.3), ("sz", 0.5), ("gy", 0.6), ("zs", 0.6), ("cs", 0.5), ("ly", 0.4), ("ny", 0.3), ("ty", 0.3), ("ban$", 0.4), ("ben$", 0.4), ("nak$", 0.5), ("nek$", 0.5), ("ság$", 0.8), ("ség$", 0.8), ("ok$", 0.2), ("ek$", 0.2)],
    ),
    latin(
        "ro",
        "și în de la cu pe a o un una este sunt era nu ca că să pentru mai din care se ce sau ai al ale lui lor fi fost am au foarte dar prin despre acest această aceste poate până după tot toate îmi te ne vă ei ea el eu noi voi cam",
        "ăâîșț",
        &[("ș", 1.0), ("ț", 1.0), ("ă", 0.6), ("î", 0.5), ("â", 0.4), ("ului$", 1.0), ("ul$", 0.3), ("ii$", 0.3), ("ea$", 0.2), ("oa", 0.3), ("ește$", 1.0), ("eș", 0.5)],
    ),
    latin(
        "da",
        "og i at det en et er til på af den de som med for har ikke jeg vi du han hun der om kan skal var men sig så fra også eller være meget efter hvor når hvis bliver blev deres dig mig ud op hvad hvordan hvorfor man have alle kun nu her omkring",
        "æøåé",
        &[("æ", 1.0), ("ø", 1.0), ("å", 0.8), ("^hv", 0.6), ("hj", 0.6), ("et$", 0.2), ("kk", 0.3), ("else$", 0.5), ("hed$", 0.5), ("ige$", 0.4), ("lig", 0.3), ("erne$", 0.6), ("ene$", 0.3), ("sk", 0.2), ("rt$", 0.2)],
    ),
    Profile {
        lang: "sk",
        script: Script::Latin,
        words: "a je sa na v vo že to s so z zo do pre ako nie by sú aj ale o k ku od po pri za čo ktorý ktorá ktoré tak ich jeho jej bol bola bolo byť môže veľmi alebo už len tento táto toto sme som si ste má majú ešte keď kde prečo ja asi",
        letters: "áäčďéíĺľňóôŕšťúýž",
        absent: "qwx",
        cues: &[("ľ", 1.0), ("ĺ", 1.0), ("ŕ", 1.0), ("ď", 1.0), ("ť", 1.0), ("ň", 1.0), ("ô", 0.6), ("ä", 0.4), ("ý", 0.6), ("y", 0.4), ("č", 0.3), ("š", 0.3), ("ž", 0.3), ("á", 0.3), ("ly$", 0.3), ("ch", 0.2), ("ov$", 0.3), ("ou$", 0.2), ("ia", 0.2)],
        punct: "",
        plain: 0.0,
    },
    latin(
        "ca",
        "el la els les l de del dels d i a al als en que un una uns unes és són per amb no es com més però aquest aquesta aquests també molt ha han hi ho ser pel pels seu seva seus seves s n què on cal si o ja sobre fins quan perquè meu meva meus meves té tot tots això aquí fer pot sempre quant quants quanta quantes quin quins quina quines",
        "àçéèíïòóúü·",
        &[("l·l", 1.0), ("ç", 0.5), ("à", 0.4), ("è", 0.4), ("ò", 0.4), ("ï", 0.4), ("ny", 0.4), ("ix", 0.4), ("tx", 0.6), ("ció$", 0.8), ("eu$", 0.3), ("ts$", 0.2), ("lls$", 0.5), ("ns$", 0.3), ("em$", 0.3), ("iu$", 0.4)],
    ),
    Profile {
        lang: "hr",
        script: Script::Latin,
        words: "i je u na se da za od s sa su to kao ili a ali što koji koja koje biti bio bila bilo ne iz po do o k te samo već još vrlo jer kad kada može nije ovo ova ovaj sam smo će bi li ima ga mu joj svoj nakon prije kako gdje zašto ja oko",
        letters: "čćđšž",
        absent: "qwxy",
        cues: &[("ć", 1.0), ("đ", 0.6), ("č", 0.3), ("š", 0.3), ("ž", 0.3), ("ije", 0.6), ("lj", 0.4), ("nj", 0.4), ("dž", 0.6), ("ti$", 0.15), ("ite$", 0.3), ("ske$", 0.3), ("vje", 0.4), ("mje", 0.4), ("bje", 0.4), ("dje", 0.4), ("sje", 0.4), ("tje", 0.4), ("ost$", 0.2), ("ju$", 0.2)],
        punct: "",
        plain: 0.0,
    },
    Profile {
        lang: "ru",
        script: Script::Cyrillic,
        words: "и в во не на что это с со как по для он она они оно я мы вы ты из к у так но а то все всё его её их быть был была было были от или при есть же бы только уже когда если чтобы очень можно нужно может также этот эта эти который которая которые про за кто",
        letters: "ёйщъыьэюя",
        absent: "",
        cues: &[("ы", 1.0), ("э", 1.0), ("ъ", 1.0), ("ё", 1.0), ("ть$", 0.3), ("ие$", 0.6), ("ое$", 0.5), ("ого$", 0.3), ("ться$", 0.3), ("ение$", 0.8), ("ание$", 0.8)],
        punct: "",
        plain: 0.0,
    },
    Profile {
        lang: "uk",
        script: Script::Cyrillic,
        words: "і й та в у не на що це з із зі як до для він вона вони воно я ми ви ти від або але його її їх бути був була було були є при вже коли якщо щоб дуже можна треба може також цей ця ці який яка які про за після хто",
        letters: "ґєіїйщьюя",
        absent: "",
        cues: &[("і", 1.0), ("ї", 1.0), ("є", 1.0), ("ґ", 1.0), ("ння$", 0.8), ("ти$", 0.2)],
        punct: "",
        plain: 0.0,
    },
    Profile {
        lang: "sr",
        script: Script::Cyrillic,
        words: "и у на је да се за од не са су што као то из а али или би био била било сам смо ће ли га му јој после пре како где зашто када кад ово ова овај који која које јер још само већ веома може нису све сваки свака свако врло кроз шта ко тако онда због док",
        letters: "ђјљњћџ",
        absent: "",
        cues: &[("ђ", 1.0), ("ј", 1.0), ("љ", 1.0), ("њ", 1.0), ("ћ", 1.0), ("џ", 1.0), ("ао$", 0.6), ("ио$", 0.4), ("ео", 0.3)],
        punct: "",
        plain: 0.1,
    },
    Profile {
        lang: "hi",
        script: Script::Devanagari,
        words: "है हैं था थी थे के की का में और से को पर यह वह ये वे भी नहीं तो हो होता होती होते एक लिए कि जो ने कर करने करता करते गया गई रहा रही रहे आप हम मैं इस उस इसे उसे अपने अपनी साथ बहुत कुछ तक जब क्या क्यों कैसे सकता सकते चाहिए पहले बाद वाला वाली वाले लगभग",
        letters: "",
        absent: "",
        cues: &[("िए$", 0.6), ("ेगा$", 0.8), ("ेगी$", 0.8), ("ेंगे$", 0.8), ("ों$", 0.5), ("ें$", 0.3), ("\u{093C}", 0.4)],
        punct: "",
        plain: 0.0,
    },
    Profile {
        lang: "ne",
        script: Script::Devanagari,
        words: "छ छन् छु छौं हो होइन को मा र पनि यो त्यो यी ती हुन्छ हुन्छन् थियो थिए भएको भयो लागि गर्न गर्छ गर्छन् गरेको गर्ने छैन हुँदैन सक्छ तथा वा भन्दा बाट सँग म हामी तपाईं तपाईँ उनी उनको मेरो आफ्नो धेरै कुनै सबै के कसरी किन करिब भोलि",
        letters: "",
        absent: "",
        cues: &[("छ$", 0.8), ("छन्$", 1.0), ("न्छ$", 1.0), ("नुहोस्$", 1.0), ("लाई$", 1.0), ("हरू", 1.0), ("हरु", 0.8), ("एको$", 0.8), ("को$", 0.3), ("मा$", 0.4), ("बाट$", 0.6), ("ँदै", 0.6)],
        punct: "",
        plain: 0.0,
    },
    Profile {
        lang: "mr",
        script: Script::Devanagari,
        words: "आहे आहेत आणि व हे ही हा या ते तो ती त्या की मध्ये नाही होते होता होती करा करणे साठी पण एक आपण मी तुम्ही आम्ही त्याच्या त्यांच्या असते असे असतो म्हणून किंवा तर जे जो जी काय कसे का आता खूप सर्व माझा माझी माझे माझ्या तुझा तुमचा तुमची आमचा आपला आपली सुमारे",
        letters: "ळऱ",
        absent: "",
        cues: &[("ळ", 1.0), ("च्या$", 0.8), ("ाचा$", 0.6), ("ाची$", 0.6), ("ाचे$", 0.6), ("मध्ये$", 0.8), ("ला$", 0.3), ("ात$", 0.2), ("तो$", 0.3), ("ण$", 0.3), ("ून$", 0.6), ("णे$", 0.5), ("ण्या", 0.6), ("तात$", 0.6), ("ांना$", 0.6), ("ांची$", 0.6)],
        punct: "",
        plain: 0.0,
    },
];

/// The tables built once from [`PROFILES`].
struct Tables {
    /// Function word → (bit i set when `PROFILES[i]` lists it, its weight `1/√k`).
    words: HashMap<&'static str, (u32, f32)>,
    /// Per script of [`SCRIPTS`], the union of its profiles' `letters`.
    special: Vec<Vec<char>>,
    /// Per profile, its cues parsed.
    cues: Vec<Vec<Cue>>,
}

/// A letter cue of [`Profile::cues`], parsed.
struct Cue {
    pattern: &'static [u8],
    at: At,
    weight: f32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum At {
    Anywhere,
    Start,
    End,
}

impl Cue {
    fn parse(cue: &'static str, weight: f32) -> Cue {
        let (pattern, at) = match (cue.strip_prefix('^'), cue.strip_suffix('$')) {
            (Some(p), _) => (p, At::Start),
            (_, Some(p)) => (p, At::End),
            _ => (cue, At::Anywhere),
        };
        Cue {
            pattern: pattern.as_bytes(),
            at,
            weight,
        }
    }

    /// Whether the cue is in `word` (whose bytes are `set`); an affix only in a word longer than
    /// itself. Bytes, not `str::contains`: for words this short a plain scan is faster, and the
    /// byte set rules most cues out before any scan.
    fn matches(&self, word: &[u8], set: &ByteSet) -> bool {
        let p = self.pattern;
        match self.at {
            At::Start => word.len() > p.len() && word.starts_with(p),
            At::End => word.len() > p.len() && word.ends_with(p),
            At::Anywhere => {
                set.has(p[0])
                    && set.has(p[p.len() - 1])
                    && word.len() >= p.len()
                    && word.windows(p.len()).any(|w| w == p)
            }
        }
    }
}

/// The set of bytes in a word.
struct ByteSet([u64; 4]);

impl ByteSet {
    fn of(bytes: &[u8]) -> ByteSet {
        let mut set = [0u64; 4];
        for &b in bytes {
            set[usize::from(b >> 6)] |= 1 << (b & 63);
        }
        ByteSet(set)
    }

    fn has(&self, b: u8) -> bool {
        self.0[usize::from(b >> 6)] & (1 << (b & 63)) != 0
    }
}

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut words: HashMap<&'static str, (u32, f32)> = HashMap::new();
        let mut special = vec![Vec::new(); SCRIPTS.len()];
        for (i, p) in PROFILES.iter().enumerate() {
            for w in p.words.split_whitespace() {
                words.entry(w).or_default().0 |= 1 << i;
            }
            special[script_index(p.script)].extend(p.letters.chars());
        }
        for (mask, weight) in words.values_mut() {
            *weight = 1.0 / (mask.count_ones() as f32).sqrt();
        }
        let cues = PROFILES
            .iter()
            .map(|p| p.cues.iter().map(|&(c, w)| Cue::parse(c, w)).collect())
            .collect();
        Tables {
            words,
            special,
            cues,
        }
    })
}

fn script_index(s: Script) -> usize {
    SCRIPTS
        .iter()
        .position(|&x| x == s)
        .expect("every script is listed")
}

/// The word being read: its letters lowercased, its script, and whether it began with a capital
/// `I`.
struct Word {
    text: String,
    script: Script,
    capital_i: bool,
}

/// Letter counts per script and candidate scores, from one pass over a text.
struct Tally {
    letters: [u32; SCRIPTS.len()],
    scores: [f32; PROFILES.len()],
}

impl Tally {
    fn of(text: &str) -> Tally {
        let t = tables();
        let mut tally = Tally {
            letters: [0; SCRIPTS.len()],
            scores: [0.0; PROFILES.len()],
        };
        let mut word = Word {
            text: String::new(),
            script: Script::Other,
            capital_i: false,
        };
        for c in text.chars() {
            match classify(c) {
                Class::Letter(s) => {
                    tally.letters[script_index(s)] += if s == Script::Han { 2 } else { 1 };
                    if s != word.script {
                        tally.score_word(t, &mut word);
                        word.script = s;
                    }
                    if word.text.is_empty() {
                        word.capital_i = c == 'I';
                    }
                    push_lower(&mut word.text, c);
                }
                Class::Joiner if !word.text.is_empty() => word.text.push(c),
                Class::Joiner => {}
                Class::Separator => {
                    tally.score_word(t, &mut word);
                    if !c.is_ascii() && !c.is_whitespace() {
                        tally.punct(c);
                    }
                }
            }
        }
        tally.score_word(t, &mut word);
        tally
    }

    /// The script with the most letters (the first in [`SCRIPTS`] on a tie), or `None` without
    /// letters or when it is [`Script::Other`].
    fn dominant_script(&self) -> Option<Script> {
        let mut best = 0;
        for i in 1..SCRIPTS.len() {
            if self.letters[i] > self.letters[best] {
                best = i;
            }
        }
        (self.letters[best] > 0 && SCRIPTS[best] != Script::Other).then_some(SCRIPTS[best])
    }

    /// Adds 1 to the languages that alone use the punctuation mark `c`.
    fn punct(&mut self, c: char) {
        for (i, p) in PROFILES.iter().enumerate() {
            if p.punct.contains(c) {
                self.scores[i] += 1.0;
            }
        }
    }

    /// Adds a word's evidence to the candidates of its script and empties it.
    fn score_word(&mut self, t: &Tables, word: &mut Word) {
        self.add_word(t, word.script, &word.text, word.capital_i);
        word.text.clear();
    }

    fn add_word(&mut self, t: &Tables, script: Script, word: &str, capital_i: bool) {
        if word.is_empty()
            || !matches!(
                script,
                Script::Latin | Script::Cyrillic | Script::Devanagari
            )
        {
            return;
        }
        if capital_i && word == "i" {
            // English's pronoun; a lowercase `i` is "and" (ca, hr), "the" (it) or "in" (da).
            self.scores[EN] += 1.0;
            return;
        }
        let (mask, weight) = t.words.get(word).copied().unwrap_or((0, 0.0));
        let special = &t.special[script_index(script)];
        let is_special = |c: char| special.contains(&c) || tone_marked(c);
        let plain = !word.chars().any(is_special);
        let set = ByteSet::of(word.as_bytes());
        for (i, p) in PROFILES
            .iter()
            .enumerate()
            .filter(|(_, p)| p.script == script)
        {
            let mut s = cue_score(p, &t.cues[i], word, &set).min(1.0);
            if mask & (1 << i) != 0 {
                s += weight;
            }
            let writes = |c: char| p.letters.contains(c) || (i == VI && tone_marked(c));
            let foreign = |c: char| p.absent.contains(c) || (!plain && is_special(c) && !writes(c));
            if word.chars().any(foreign) || (i == VI && !vi_syllable(word)) {
                s -= 1.0;
            }
            if plain {
                s += p.plain;
            }
            self.scores[i] += s;
        }
    }
}

/// Appends `c` lowercased; Romanian's cedilla forms (ş ţ) become the comma forms (ș ț).
fn push_lower(word: &mut String, c: char) {
    for l in c.to_lowercase() {
        word.push(match l {
            'ş' => 'ș',
            'ţ' => 'ț',
            _ => l,
        });
    }
}

/// The sum of `p`'s cues found in `word`.
fn cue_score(p: &Profile, cues: &[Cue], word: &str, set: &ByteSet) -> f32 {
    let bytes = word.as_bytes();
    let mut s: f32 = cues
        .iter()
        .filter(|c| c.matches(bytes, set))
        .map(|c| c.weight)
        .sum();
    if p.lang == "vi" && word.chars().any(tone_marked) {
        s += 1.0;
    }
    s
}

/// Whether a lowercase word is a possible Vietnamese syllable: an optional initial consonant,
/// one to three vowels, an optional final among c ch m n ng nh p t. Most words of the other
/// Latin languages are not (`and`, `visited`, `gibt`), which keeps a few tone-marked names from
/// outweighing the English around them.
fn vi_syllable(word: &str) -> bool {
    const INITIALS: [&str; 27] = [
        "ngh", "ng", "nh", "ch", "gh", "gi", "kh", "ph", "qu", "th", "tr", "b", "c", "d", "đ", "g",
        "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "x",
    ];
    let rest = INITIALS
        .iter()
        .find_map(|i| word.strip_prefix(i))
        .unwrap_or(word);
    // Vowels: a e i o u y, and any other letter or mark of the word but đ (ă â ê ô ơ ư, tones).
    let vowel =
        |c: char| matches!(c, 'a' | 'e' | 'i' | 'o' | 'u' | 'y') || !(c.is_ascii() || c == 'đ');
    let end = rest.find(|c: char| !vowel(c)).unwrap_or(rest.len());
    let vowels = rest[..end].chars().filter(|c| c.is_alphabetic()).count();
    (1..=3).contains(&vowels)
        && matches!(
            &rest[end..],
            "" | "c" | "ch" | "m" | "n" | "ng" | "nh" | "p" | "t"
        )
}

/// The precomposed vowels with Vietnamese tone marks (Latin Extended Additional, ạ..ỹ), which
/// Vietnamese alone of [`LANGS`] writes; a range rather than 90 more `letters`.
fn tone_marked(c: char) -> bool {
    matches!(c, '\u{1EA0}'..='\u{1EF9}')
}

/// Counts of (truth, prediction) pairs over [`LANGS`], the prediction possibly `None`; renders a
/// compact Markdown table of per-language accuracy and confusions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confusion {
    /// `counts[truth][predicted]`, the last column for `None`.
    counts: [[u32; LANGS.len() + 1]; LANGS.len()],
}

impl Default for Confusion {
    fn default() -> Self {
        Confusion {
            counts: [[0; LANGS.len() + 1]; LANGS.len()],
        }
    }
}

impl Confusion {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one text of language `truth` detected as `predicted`.
    ///
    /// # Panics
    /// When `truth`, or `predicted` if given, is not one of [`LANGS`].
    pub fn add(&mut self, truth: &str, predicted: Option<&str>) {
        let row = lang_index(truth);
        let col = predicted.map_or(LANGS.len(), lang_index);
        self.counts[row][col] += 1;
    }

    /// How many texts were counted.
    pub fn total(&self) -> u32 {
        self.counts.iter().flatten().sum()
    }

    /// How many texts were detected as their language.
    pub fn correct(&self) -> u32 {
        (0..LANGS.len()).map(|i| self.counts[i][i]).sum()
    }

    /// The fraction of texts detected as their language (0 for an empty table).
    pub fn accuracy(&self) -> f64 {
        let n = self.total();
        if n == 0 {
            0.0
        } else {
            f64::from(self.correct()) / f64::from(n)
        }
    }

    /// One row per language of [`LANGS`] (rows: truth): `| lang | n | correct | accuracy |
    /// confused with |`, the last cell listing the wrong predictions as `code ×count` (most
    /// frequent first, `none` for no answer), and a final **all** row.
    pub fn markdown(&self) -> String {
        let mut out = String::from(
            "| lang | n | correct | accuracy | confused with |\n|---|--:|--:|--:|---|\n",
        );
        for (i, lang) in LANGS.iter().enumerate() {
            let n: u32 = self.counts[i].iter().sum();
            let ok = self.counts[i][i];
            let mut wrong: Vec<(u32, usize)> = (0..=LANGS.len())
                .filter(|&j| j != i && self.counts[i][j] > 0)
                .map(|j| (self.counts[i][j], j))
                .collect();
            wrong.sort_by_key(|&(count, j)| (std::cmp::Reverse(count), j));
            let confused: Vec<String> = wrong
                .iter()
                .map(|&(count, j)| format!("{} ×{count}", LANGS.get(j).copied().unwrap_or("none")))
                .collect();
            out.push_str(&format!(
                "| {lang} | {n} | {ok} | {} | {} |\n",
                percent(ok, n),
                confused.join(", ")
            ));
        }
        out.push_str(&format!(
            "| **all** | {} | {} | {} | |\n",
            self.total(),
            self.correct(),
            percent(self.correct(), self.total())
        ));
        out
    }
}

fn lang_index(lang: &str) -> usize {
    LANGS
        .iter()
        .position(|&l| l == lang)
        .unwrap_or_else(|| panic!("unknown language code {lang:?}"))
}

fn percent(k: u32, n: u32) -> String {
    if n == 0 {
        "–".into()
    } else {
        format!("{:.1}%", 100.0 * f64::from(k) / f64::from(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn langs_match_the_bundled_assets() {
        assert_eq!(&LANGS[..], crate::assets::LANGS);
        assert!(known("sr") && known("kn") && !known("pt") && !known(""));
    }

    #[test]
    fn profiles_cover_the_shared_scripts_in_langs_order() {
        let mut last = 0;
        for script in [Script::Latin, Script::Cyrillic, Script::Devanagari] {
            let order: Vec<usize> = PROFILES
                .iter()
                .filter(|p| p.script == script)
                .map(|p| lang_index(p.lang))
                .collect();
            assert!(
                order.windows(2).all(|w| w[0] < w[1]),
                "{script:?}: profiles out of LANGS order"
            );
            last += order.len();
        }
        assert_eq!(last, PROFILES.len());
        assert_eq!(PROFILES[EN].lang, "en");
        assert_eq!(PROFILES[VI].lang, "vi");
        for lang in LANGS {
            let profiled = PROFILES.iter().any(|p| p.lang == lang);
            let single = SCRIPTS.iter().any(|s| s.single_language() == Some(lang));
            assert!(
                profiled != single,
                "{lang}: needs exactly one of a profile or a script of its own"
            );
        }
    }

    #[test]
    fn cues_and_words_are_lowercase_and_listed_once() {
        for p in &PROFILES {
            for w in p.words.split_whitespace().chain(p.cues.iter().map(|c| c.0)) {
                assert_eq!(w, w.to_lowercase(), "{}: {w}", p.lang);
            }
            let words: Vec<&str> = p.words.split_whitespace().collect();
            let distinct: std::collections::HashSet<&str> = words.iter().copied().collect();
            assert_eq!(
                words.len(),
                distinct.len(),
                "{}: a function word listed twice",
                p.lang
            );
            for (cue, w) in p.cues {
                assert!(
                    !cue.trim_start_matches('^').trim_end_matches('$').is_empty() && *w > 0.0,
                    "{}: cue {cue:?}",
                    p.lang
                );
            }
        }
    }

    #[test]
    fn scripts_and_joiners() {
        assert_eq!(classify('a'), Class::Letter(Script::Latin));
        assert_eq!(classify('ự'), Class::Letter(Script::Latin));
        assert_eq!(classify('ж'), Class::Letter(Script::Cyrillic));
        assert_eq!(classify('क'), Class::Letter(Script::Devanagari));
        assert_eq!(classify('\u{094D}'), Class::Joiner);
        assert_eq!(classify('।'), Class::Separator);
        assert_eq!(classify('५'), Class::Separator);
        assert_eq!(classify('中'), Class::Letter(Script::Han));
        assert_eq!(classify('。'), Class::Separator);
        assert_eq!(classify('α'), Class::Letter(Script::Other));
        assert!(vi_syllable("nguyễn") && vi_syllable("thành") && vi_syllable("a"));
        assert!(vi_syllable("khuya") && vi_syllable("phố") && vi_syllable("the"));
        assert!(!vi_syllable("and") && !vi_syllable("visited") && !vi_syllable("gibt"));
        assert!(!vi_syllable("we") && !vi_syllable("str") && !vi_syllable("fa"));
        assert_eq!(classify('\''), Class::Separator);
    }

    #[test]
    fn han_outweighs_a_latin_term() {
        assert_eq!(detect("我喜欢用Python编程"), Some("zh"));
        assert_eq!(detect("Ελληνικά"), None);
    }

    #[test]
    fn confusion_table() {
        let mut c = Confusion::new();
        assert_eq!(c.accuracy(), 0.0);
        c.add("en", Some("en"));
        c.add("en", Some("nl"));
        c.add("en", None);
        c.add("en", Some("nl"));
        c.add("da", Some("da"));
        assert_eq!((c.total(), c.correct()), (5, 2));
        assert!((c.accuracy() - 0.4).abs() < 1e-12);
        let md = c.markdown();
        assert!(
            md.contains("| en | 4 | 1 | 25.0% | nl ×2, none ×1 |\n"),
            "{md}"
        );
        assert!(md.contains("| da | 1 | 1 | 100.0% |  |\n"), "{md}");
        assert!(md.contains("| ru | 0 | 0 | – |  |\n"), "{md}");
        assert!(md.ends_with("| **all** | 5 | 2 | 40.0% | |\n"), "{md}");
        assert_eq!(md.lines().count(), 2 + 27 + 1);
    }

    #[test]
    #[should_panic(expected = "unknown language code")]
    fn confusion_rejects_unknown_codes() {
        Confusion::new().add("pt", None);
    }
}
