"""Prompt templates and class-name translations for remote-sensing zero-shot classification.

RS-M-CLIP is trained on captions in ten languages, so zero-shot prompts can be written in any of them. Each
template has exactly one ``{}`` where the class name goes. ``CLASS_NAMES`` holds hand-checked translations of the
class names of the datasets shipped with the project's tests and examples (UC Merced Land Use and RSSCN7); other
datasets fall back to their (English) folder names, or to names translated by the dataset builder.
"""

from __future__ import annotations

LANGUAGES: tuple[str, ...] = ("en", "pt", "es", "fr", "de", "nl", "it", "zh", "ko", "ru")

LANGUAGE_NAMES: dict[str, str] = {
    "en": "English",
    "pt": "Portuguese",
    "es": "Spanish",
    "fr": "French",
    "de": "German",
    "nl": "Dutch",
    "it": "Italian",
    "zh": "Chinese",
    "ko": "Korean",
    "ru": "Russian",
}

PROMPT_TEMPLATES: dict[str, list[str]] = {
    "en": [
        "a satellite image of {}.",
        "an aerial image of {}.",
        "a remote sensing image of {}.",
        "an aerial photo of {}.",
    ],
    "pt": [
        "uma imagem de satélite de {}.",
        "uma imagem aérea de {}.",
        "uma imagem de deteção remota de {}.",
        "uma fotografia aérea de {}.",
    ],
    "es": [
        "una imagen de satélite de {}.",
        "una imagen aérea de {}.",
        "una imagen de teledetección de {}.",
        "una fotografía aérea de {}.",
    ],
    "fr": [
        "une image satellite de {}.",
        "une image aérienne de {}.",
        "une image de télédétection de {}.",
        "une photo aérienne de {}.",
    ],
    "de": [
        "ein Satellitenbild von {}.",
        "ein Luftbild von {}.",
        "ein Fernerkundungsbild von {}.",
        "eine Luftaufnahme von {}.",
    ],
    "nl": [
        "een satellietbeeld van {}.",
        "een luchtfoto van {}.",
        "een teledetectiebeeld van {}.",
        "een luchtopname van {}.",
    ],
    "it": [
        "un'immagine satellitare di {}.",
        "un'immagine aerea di {}.",
        "un'immagine telerilevata di {}.",
        "una foto aerea di {}.",
    ],
    "zh": [
        "{}的卫星图像。",
        "{}的航空图像。",
        "{}的遥感图像。",
        "{}的航拍照片。",
    ],
    "ko": [
        "{}의 위성 이미지.",
        "{}의 항공 이미지.",
        "{}의 원격 탐사 이미지.",
        "{}의 항공 사진.",
    ],
    "ru": [
        "спутниковый снимок: {}.",
        "аэрофотоснимок: {}.",
        "снимок дистанционного зондирования: {}.",
        "аэрофотография: {}.",
    ],
}


def _names(*values: str) -> dict[str, str]:
    if len(values) != len(LANGUAGES):
        raise ValueError(f"expected {len(LANGUAGES)} translations, got {len(values)}: {values}")
    return dict(zip(LANGUAGES, values))


# Keys are the dataset's own class identifiers (folder names / labels.csv values).
CLASS_NAMES_UCM: dict[str, dict[str, str]] = {
    "agricultural": _names(
        "agricultural land",
        "terreno agrícola",
        "terreno agrícola",
        "terres agricoles",
        "Ackerland",
        "landbouwgrond",
        "terreno agricolo",
        "农田",
        "농경지",
        "сельскохозяйственные угодья",
    ),
    "airplane": _names(
        "airplanes",
        "aviões",
        "aviones",
        "avions",
        "Flugzeuge",
        "vliegtuigen",
        "aerei",
        "飞机",
        "비행기",
        "самолёты",
    ),
    "baseballdiamond": _names(
        "a baseball field",
        "um campo de basebol",
        "un campo de béisbol",
        "un terrain de baseball",
        "ein Baseballfeld",
        "een honkbalveld",
        "un campo da baseball",
        "棒球场",
        "야구장",
        "бейсбольное поле",
    ),
    "beach": _names(
        "a beach",
        "uma praia",
        "una playa",
        "une plage",
        "ein Strand",
        "een strand",
        "una spiaggia",
        "海滩",
        "해변",
        "пляж",
    ),
    "buildings": _names(
        "buildings",
        "edifícios",
        "edificios",
        "des bâtiments",
        "Gebäude",
        "gebouwen",
        "edifici",
        "建筑物",
        "건물",
        "здания",
    ),
    "chaparral": _names(
        "chaparral shrubland",
        "mato de chaparral",
        "matorral de chaparral",
        "un maquis de chaparral",
        "Chaparral-Buschland",
        "chaparral-struikgewas",
        "macchia di chaparral",
        "灌木丛",
        "관목지대",
        "кустарниковые заросли чапараль",
    ),
    "denseresidential": _names(
        "a dense residential area",
        "uma zona residencial densa",
        "una zona residencial densa",
        "une zone résidentielle dense",
        "ein dichtes Wohngebiet",
        "een dichtbebouwde woonwijk",
        "una zona residenziale densa",
        "密集住宅区",
        "밀집 주거 지역",
        "плотная жилая застройка",
    ),
    "forest": _names(
        "a forest",
        "uma floresta",
        "un bosque",
        "une forêt",
        "ein Wald",
        "een bos",
        "una foresta",
        "森林",
        "숲",
        "лес",
    ),
    "freeway": _names(
        "a freeway",
        "uma autoestrada",
        "una autopista",
        "une autoroute",
        "eine Autobahn",
        "een snelweg",
        "un'autostrada",
        "高速公路",
        "고속도로",
        "автомагистраль",
    ),
    "golfcourse": _names(
        "a golf course",
        "um campo de golfe",
        "un campo de golf",
        "un terrain de golf",
        "ein Golfplatz",
        "een golfbaan",
        "un campo da golf",
        "高尔夫球场",
        "골프장",
        "поле для гольфа",
    ),
    "harbor": _names(
        "a harbor",
        "um porto",
        "un puerto",
        "un port",
        "ein Hafen",
        "een haven",
        "un porto",
        "港口",
        "항구",
        "гавань",
    ),
    "intersection": _names(
        "an intersection",
        "um cruzamento",
        "un cruce",
        "un carrefour",
        "eine Kreuzung",
        "een kruispunt",
        "un incrocio",
        "十字路口",
        "교차로",
        "перекрёсток",
    ),
    "mediumresidential": _names(
        "a medium density residential area",
        "uma zona residencial de densidade média",
        "una zona residencial de densidad media",
        "une zone résidentielle de densité moyenne",
        "ein Wohngebiet mittlerer Dichte",
        "een woonwijk met middelhoge dichtheid",
        "una zona residenziale a media densità",
        "中密度住宅区",
        "중밀도 주거 지역",
        "жилая застройка средней плотности",
    ),
    "mobilehomepark": _names(
        "a mobile home park",
        "um parque de casas móveis",
        "un parque de casas móviles",
        "un parc de maisons mobiles",
        "ein Wohnwagenpark",
        "een woonwagenkamp",
        "un parco di case mobili",
        "移动房屋园区",
        "이동식 주택 단지",
        "парк передвижных домов",
    ),
    "overpass": _names(
        "an overpass",
        "um viaduto",
        "un paso elevado",
        "un viaduc",
        "eine Überführung",
        "een viaduct",
        "un cavalcavia",
        "立交桥",
        "고가도로",
        "путепровод",
    ),
    "parkinglot": _names(
        "a parking lot",
        "um parque de estacionamento",
        "un aparcamiento",
        "un parking",
        "ein Parkplatz",
        "een parkeerplaats",
        "un parcheggio",
        "停车场",
        "주차장",
        "парковка",
    ),
    "river": _names(
        "a river",
        "um rio",
        "un río",
        "une rivière",
        "ein Fluss",
        "een rivier",
        "un fiume",
        "河流",
        "강",
        "река",
    ),
    "runway": _names(
        "a runway",
        "uma pista de aterragem",
        "una pista de aterrizaje",
        "une piste d'atterrissage",
        "eine Start- und Landebahn",
        "een landingsbaan",
        "una pista di atterraggio",
        "机场跑道",
        "활주로",
        "взлётно-посадочная полоса",
    ),
    "sparseresidential": _names(
        "a sparse residential area",
        "uma zona residencial dispersa",
        "una zona residencial dispersa",
        "une zone résidentielle peu dense",
        "ein locker bebautes Wohngebiet",
        "een dunbebouwde woonwijk",
        "una zona residenziale sparsa",
        "稀疏住宅区",
        "저밀도 주거 지역",
        "редкая жилая застройка",
    ),
    "storagetanks": _names(
        "storage tanks",
        "tanques de armazenamento",
        "tanques de almacenamiento",
        "des réservoirs de stockage",
        "Lagertanks",
        "opslagtanks",
        "serbatoi di stoccaggio",
        "储油罐",
        "저장 탱크",
        "резервуары для хранения",
    ),
    "tenniscourt": _names(
        "a tennis court",
        "um campo de ténis",
        "una pista de tenis",
        "un court de tennis",
        "ein Tennisplatz",
        "een tennisbaan",
        "un campo da tennis",
        "网球场",
        "테니스장",
        "теннисный корт",
    ),
}

# RSSCN7's forest and parking classes are the same scenes as UCM's forest and parking lot.
CLASS_NAMES: dict[str, dict[str, dict[str, str]]] = {
    "ucm": CLASS_NAMES_UCM,
    "rsscn7": {
        "field": _names(
            "a field",
            "um campo",
            "un campo",
            "un champ",
            "ein Feld",
            "een akker",
            "un campo",
            "田地",
            "들판",
            "поле",
        ),
        "forest": CLASS_NAMES_UCM["forest"],
        "grass": _names(
            "grassland",
            "relvado",
            "pastizal",
            "une prairie",
            "Grasland",
            "grasland",
            "prateria",
            "草地",
            "초원",
            "луг",
        ),
        "industry": _names(
            "an industrial area",
            "uma zona industrial",
            "una zona industrial",
            "une zone industrielle",
            "ein Industriegebiet",
            "een industriegebied",
            "una zona industriale",
            "工业区",
            "산업 지역",
            "промышленная зона",
        ),
        "parking": CLASS_NAMES_UCM["parkinglot"],
        "residential": _names(
            "a residential area",
            "uma zona residencial",
            "una zona residencial",
            "une zone résidentielle",
            "ein Wohngebiet",
            "een woonwijk",
            "una zona residenziale",
            "住宅区",
            "주거 지역",
            "жилой район",
        ),
        "river_lake": _names(
            "a river or lake",
            "um rio ou lago",
            "un río o lago",
            "une rivière ou un lac",
            "ein Fluss oder See",
            "een rivier of meer",
            "un fiume o lago",
            "河流或湖泊",
            "강 또는 호수",
            "река или озеро",
        ),
    },
}

# Common aliases under which users refer to the same datasets.
CLASS_NAMES["ucm-captions"] = CLASS_NAMES["ucm"]
CLASS_NAMES["ucmerced"] = CLASS_NAMES["ucm"]
CLASS_NAMES["rsscn7-mini"] = CLASS_NAMES["rsscn7"]


def humanize_class_name(name: str) -> str:
    """Turn a folder-style class identifier into words: ``"river_lake"`` -> ``"river lake"``."""
    return name.replace("_", " ").replace("-", " ").strip()


def class_name(dataset: str | None, label: str, lang: str = "en") -> str:
    """The class name of ``label`` in ``lang``: a known translation, else the humanised identifier.

    Raises ValueError for an unknown language code, naming the supported ones.
    """
    if lang not in LANGUAGES:
        raise ValueError(f"unsupported language {lang!r}; choose one of {', '.join(LANGUAGES)}")
    table = CLASS_NAMES.get((dataset or "").lower(), {})
    if label in table:
        return table[label][lang]
    return humanize_class_name(label)


def prompts_for(label_text: str, lang: str = "en") -> list[str]:
    """All prompt templates of ``lang`` filled with ``label_text``."""
    if lang not in PROMPT_TEMPLATES:
        raise ValueError(f"no prompt templates for language {lang!r}; choose one of {', '.join(LANGUAGES)}")
    return [template.format(label_text) for template in PROMPT_TEMPLATES[lang]]
