"""A phonetically rich, seeded sentence set for training a voice (templates x vocabulary).

Why generated rather than collected: nothing can be downloaded here, and a generator gives control
over what the decoder must learn: many distinct words, names, places, numbers read as words, questions
and exclamations, short and long sentences. Every sentence is already in spoken form (no digits or
symbols), so the text the model sees is exactly what the teacher says.

The held-out evaluation sentences (`llmvox/voices/heldout_sentences.txt`) are never produced: any
generated sentence that matches one (case and punctuation ignored) is dropped.

Besides the hand-written lists below, the generator can borrow a large tagged word list (nouns,
adjectives, -ing forms, adverbs) from the hibari-tts tagger when that package is installed, which
multiplies the number of distinct words cheaply. `sentence_set(..., extended_vocab=False)` turns it off.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

HELDOUT_PATH = Path(__file__).resolve().parent.parent / "voices" / "heldout_sentences.txt"

# ---------------------------------------------------------------------------------------------
# numbers in words


_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_ORD_IRREGULAR = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                  "nine": "ninth", "twelve": "twelfth"}


def number_words(n: int) -> str:
    """Cardinal in words, American style without "and": 2024 -> "two thousand twenty four"."""
    if n < 0:
        return "minus " + number_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        t, o = divmod(n, 10)
        return _TENS[t] + ("" if o == 0 else " " + _ONES[o])
    if n < 1000:
        h, r = divmod(n, 100)
        return _ONES[h] + " hundred" + ("" if r == 0 else " " + number_words(r))
    for size, word in ((10**9, "billion"), (10**6, "million"), (1000, "thousand")):
        if n >= size:
            q, r = divmod(n, size)
            return number_words(q) + " " + word + ("" if r == 0 else " " + number_words(r))
    raise AssertionError(n)


def ordinal_words(n: int) -> str:
    """Ordinal in words: 21 -> "twenty first"."""
    words = number_words(n).split()
    last = words[-1]
    if last in _ORD_IRREGULAR:
        words[-1] = _ORD_IRREGULAR[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def year_words(y: int) -> str:
    """A year the way it is said: 1984 -> "nineteen eighty four", 2005 -> "two thousand five"."""
    if 2000 <= y < 2010:
        return number_words(y)
    hi, lo = divmod(y, 100)
    if lo == 0:
        return number_words(hi) + " hundred"
    if lo < 10:
        return number_words(hi) + " oh " + _ONES[lo]
    return number_words(hi) + " " + number_words(lo)


# ---------------------------------------------------------------------------------------------
# vocabulary (hand-written; deliberately broad)

_W = str.split

NAMES = _W("""Aaron Abigail Adam Adrian Aisha Alan Alejandro Alice Amara Amelia Andre Angela Anna Anton
Arjun Ava Barbara Beatrice Benjamin Bianca Boris Brandon Caleb Camille Carlos Caroline Charlotte Chen
Chloe Christopher Clara Daniel Daphne David Deborah Diego Dmitri Dorothy Edward Eleanor Elena Elijah
Emily Emma Erik Esther Ethan Fatima Felix Fiona Francesca Gabriel George Grace Hannah Harold Harriet
Hector Helen Henry Hiroshi Hugo Ibrahim Ingrid Isaac Isabel Ivan Jack Jacob James Jasmine Javier
Jennifer Joaquin Jonathan Jose Joshua Julia Julian Kai Karen Katherine Kenji Kevin Kofi Laila Laura
Leo Leonard Lily Lucas Lucy Luis Madeline Malik Margaret Maria Marcus Martin Mateo Matthew Maya Mei
Michael Miguel Mohammed Nadia Natalie Nathan Nina Noah Nora Oliver Olivia Omar Oscar Patricia Patrick
Paul Penelope Peter Priya Rachel Rafael Rebecca Ricardo Robert Rosa Ruby Samuel Sara Sebastian Sofia
Stella Stephen Susan Tariq Theodore Thomas Tobias Uma Valentina Victor Vincent Walter William Xavier
Yara Yusuf Zachary Zoe Zara""")

SURNAMES = _W("""Anderson Baker Bennett Brooks Campbell Carter Chang Clarke Coleman Cooper Davies
Delgado Diaz Edwards Evans Fischer Fitzgerald Foster Garcia Gonzalez Gray Green Hall Harris Hayes
Hernandez Hughes Ito Jackson Jensen Johnson Kaur Kelly Kim Kowalski Larsen Lee Lopez Martinez Meyer
Miller Mitchell Moreau Morgan Murphy Nakamura Nguyen Nielsen Okafor Olsen Ortiz Parker Patel Perez
Peterson Phillips Price Ramirez Reed Richardson Rivera Roberts Rossi Russell Sanchez Schmidt Scott
Shapiro Silva Singh Sullivan Tanaka Taylor Thompson Torres Turner Walker Ward Watson Weber Williams
Wright Young Zhang""")

TITLES = _W("Doctor Professor Mister Missus Captain Judge Officer Nurse Coach Senator")

CITIES = _W("""Amsterdam Athens Atlanta Auckland Austin Baltimore Bangkok Barcelona Beijing Berlin Bogota
Boston Brisbane Brussels Budapest Cairo Calgary Chicago Copenhagen Dallas Denver Detroit Dublin
Edinburgh Florence Geneva Glasgow Hamburg Helsinki Honolulu Houston Istanbul Jakarta Johannesburg
Kyoto Lagos Lima Lisbon Liverpool London Madrid Manchester Marseille Melbourne Miami Milan Montreal
Moscow Mumbai Munich Nairobi Nashville Oslo Ottawa Paris Perth Philadelphia Phoenix Portland Prague
Reykjavik Rome Santiago Seattle Seoul Singapore Stockholm Sydney Taipei Tokyo Toronto Vancouver
Venice Vienna Warsaw Zurich""")

COUNTRIES = _W("""Argentina Australia Austria Belgium Brazil Canada Chile China Colombia Croatia Denmark
Egypt Ethiopia Finland France Germany Ghana Greece Iceland India Indonesia Ireland Italy Jamaica Japan
Kenya Malaysia Mexico Morocco Nepal Nigeria Norway Peru Poland Portugal Romania Scotland Spain Sweden
Switzerland Thailand Turkey Uganda Ukraine Uruguay Vietnam Wales""")

DAYS = _W("Monday Tuesday Wednesday Thursday Friday Saturday Sunday")
MONTHS = _W("January February March April May June July August September October November December")
COLORS = _W("""red blue green yellow purple orange pink brown black white gray silver golden violet
turquoise crimson beige maroon navy olive""")

# concrete nouns (singular); plurals are formed by `plural`
OBJECTS = _W("""apple backpack balloon basket bicycle blanket book bottle bowl box bracelet bridge brush
bucket button cabinet calendar camera candle carpet chair clock coat compass computer cup curtain
desk diary door drawer envelope fence flashlight fork guitar hammer helmet jacket jar kettle key
ladder lamp laptop letter lock map mirror necklace needle notebook oven package painting pan pencil
piano pillow plate pocket radio ribbon ring rope ruler saddle scarf scissors shelf shovel sofa spoon
stamp suitcase sweater table telescope ticket towel tray trumpet umbrella vase violin wallet watch
wheel whistle window""")

FOODS = _W("""bread butter cheese soup rice pasta salad sandwich pizza pancake omelet yogurt cereal
honey jam chocolate cookie muffin lemon orange banana grape strawberry blueberry cherry peach pear
pineapple mango melon tomato potato carrot onion garlic pepper cucumber broccoli spinach mushroom
cabbage pumpkin salmon chicken noodle dumpling burrito waffle biscuit pie cake coffee tea juice""")

ANIMALS = _W("""cat dog horse cow sheep goat pig rabbit mouse squirrel fox wolf bear deer moose tiger
lion leopard cheetah zebra giraffe elephant hippo rhino monkey gorilla kangaroo koala panda camel
donkey owl eagle hawk parrot penguin pigeon swan duck goose crow sparrow turtle frog lizard snake
dolphin whale shark octopus crab jellyfish butterfly beetle spider bee ant""")

JOBS = _W("""teacher doctor nurse farmer baker carpenter plumber electrician pilot sailor engineer
architect lawyer judge chef waiter musician painter photographer journalist librarian scientist
mechanic gardener firefighter dentist pharmacist accountant programmer designer tailor barber
cashier driver astronaut veterinarian surgeon professor student translator""")

PLACES = _W("""library museum market bakery station airport harbor hospital school office kitchen garden
park beach forest mountain valley river lake island village castle cathedral theater stadium
restaurant cafe hotel factory warehouse farm barn cellar attic garage basement playground bookstore
pharmacy gallery laboratory courthouse lighthouse""")

ABSTRACT = _W("""idea plan story question answer reason problem solution decision promise secret
memory dream mistake lesson habit choice chance rule message meeting journey adventure surprise
holiday birthday wedding concert festival election experiment interview competition conversation
argument agreement opinion theory habit routine schedule budget recipe invention discovery""")

NATURE = _W("""rain snow wind storm thunder lightning fog cloud sunshine rainbow ocean wave tide sand
stone rock pebble leaf branch root flower blossom meadow hill cliff cave desert glacier volcano
waterfall stream pond sky moon star planet comet sunset sunrise""")

ADJECTIVES = _W("""quiet loud bright dark warm cold hot cool soft hard smooth rough heavy light tall
short long wide narrow deep shallow thick thin sharp dull clean dirty fresh stale sweet sour bitter
salty spicy empty full busy lazy brave shy proud humble gentle fierce calm nervous curious careful
careless clever foolish honest polite rude friendly lonely cheerful gloomy famous ordinary strange
familiar ancient modern fragile sturdy expensive cheap generous patient anxious eager tired sleepy
hungry thirsty delicious enormous tiny gigantic elegant clumsy graceful noisy peaceful crowded
distant nearby hidden obvious rare common simple complicated useful useless beautiful ugly wonderful
terrible excellent awful mysterious magnificent ridiculous serious funny strict fair""")

ADVERBS = _W("""quickly slowly quietly loudly carefully happily sadly gently suddenly finally
eventually usually rarely often always never sometimes recently immediately patiently politely
silently eagerly nervously calmly proudly honestly clearly easily barely nearly almost already
together alone early late soon tomorrow yesterday tonight""")

# verbs as (base, third person, past, participle, -ing)
_VERB_ROWS = """
ask asks asked asked asking | bake bakes baked baked baking | borrow borrows borrowed borrowed borrowing
build builds built built building | buy buys bought bought buying | carry carries carried carried carrying
catch catches caught caught catching | choose chooses chose chosen choosing | clean cleans cleaned cleaned cleaning
climb climbs climbed climbed climbing | close closes closed closed closing | cook cooks cooked cooked cooking
count counts counted counted counting | cross crosses crossed crossed crossing | dance dances danced danced dancing
deliver delivers delivered delivered delivering | describe describes described described describing
discover discovers discovered discovered discovering | draw draws drew drawn drawing | drink drinks drank drunk drinking
drive drives drove driven driving | explain explains explained explained explaining | fix fixes fixed fixed fixing
fold folds folded folded folding | follow follows followed followed following | forget forgets forgot forgotten forgetting
hide hides hid hidden hiding | hold holds held held holding | invite invites invited invited inviting
join joins joined joined joining | keep keeps kept kept keeping | learn learns learned learned learning
leave leaves left left leaving | lend lends lent lent lending | lift lifts lifted lifted lifting
measure measures measured measured measuring | mend mends mended mended mending | move moves moved moved moving
notice notices noticed noticed noticing | open opens opened opened opening | order orders ordered ordered ordering
paint paints painted painted painting | pack packs packed packed packing | plant plants planted planted planting
polish polishes polished polished polishing | prepare prepares prepared prepared preparing | pull pulls pulled pulled pulling
push pushes pushed pushed pushing | read reads read read reading | remember remembers remembered remembered remembering
repair repairs repaired repaired repairing | ride rides rode ridden riding | sell sells sold sold selling
send sends sent sent sending | sew sews sewed sewn sewing | share shares shared shared sharing
sing sings sang sung singing | sketch sketches sketched sketched sketching | steal steals stole stolen stealing
study studies studied studied studying | sweep sweeps swept swept sweeping | take takes took taken taking
taste tastes tasted tasted tasting | teach teaches taught taught teaching | throw throws threw thrown throwing
touch touches touched touched touching | visit visits visited visited visiting | wash washes washed washed washing
watch watches watched watched watching | weigh weighs weighed weighed weighing | wrap wraps wrapped wrapped wrapping
write writes wrote written writing | find finds found found finding | bring brings brought brought bringing
break breaks broke broken breaking | check checks checked checked checking | collect collects collected collected collecting
compare compares compared compared comparing | decorate decorates decorated decorated decorating
examine examines examined examined examining | guard guards guarded guarded guarding | heat heats heated heated heating
inspect inspects inspected inspected inspecting | label labels labeled labeled labeling | launch launches launched launched launching
mix mixes mixed mixed mixing | photograph photographs photographed photographed photographing
rescue rescues rescued rescued rescuing | scrub scrubs scrubbed scrubbed scrubbing | shake shakes shook shaken shaking
slice slices sliced sliced slicing | squeeze squeezes squeezed squeezed squeezing | stir stirs stirred stirred stirring
test tests tested tested testing | toss tosses tossed tossed tossing | unlock unlocks unlocked unlocked unlocking
"""
VERBS = [tuple(row.split()) for row in _VERB_ROWS.replace("\n", " | ").split("|") if row.strip()]

# intransitive verbs (base, third person, past, -ing)
_INTRANS_ROWS = """
arrive arrives arrived arriving | laugh laughs laughed laughing | sleep sleeps slept sleeping
run runs ran running | swim swims swam swimming | wait waits waited waiting | smile smiles smiled smiling
travel travels traveled traveling | whisper whispers whispered whispering | shout shouts shouted shouting
wander wanders wandered wandering | hurry hurries hurried hurrying | sneeze sneezes sneezed sneezing
shiver shivers shivered shivering | giggle giggles giggled giggling | cough coughs coughed coughing
vanish vanishes vanished vanishing | complain complains complained complaining | rest rests rested resting
jump jumps jumped jumping | fall falls fell falling | grow grows grew growing | sigh sighs sighed sighing
"""
INTRANSITIVE = [tuple(row.split()) for row in _INTRANS_ROWS.replace("\n", " | ").split("|") if row.strip()]

_IRREGULAR_PLURALS = {"mouse": "mice", "sheep": "sheep", "deer": "deer", "moose": "moose", "goose": "geese",
                      "fish": "fish", "leaf": "leaves", "knife": "knives", "scissors": "scissors",
                      "octopus": "octopuses", "cactus": "cacti", "child": "children", "person": "people",
                      "shelf": "shelves", "volcano": "volcanoes", "tomato": "tomatoes", "potato": "potatoes"}


def plural(noun: str) -> str:
    """English plural of a regular or listed irregular noun."""
    if noun in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[noun]
    if re.search(r"(s|x|z|ch|sh)$", noun):
        return noun + "es"
    if re.search(r"[^aeiou]y$", noun):
        return noun[:-1] + "ies"
    return noun + "s"


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" and not word.lower().startswith(("uni", "use", "eu", "one")) \
        else "a"


# ---------------------------------------------------------------------------------------------
# extended vocabulary


@lru_cache(maxsize=1)
def extended_vocabulary() -> dict[str, tuple[str, ...]]:
    """Frequent words by part of speech from hibari-tts' tagger dictionary, if installed (else empty).

    Only plain lowercase alphabetic words are kept; proper nouns are skipped (they are often foreign
    or odd) since the hand-written name lists cover names.
    """
    try:
        import gzip
        import json
        from importlib.resources import files

        with gzip.open(str(files("hibari") / "assets" / "tagger.json.gz"), "rt", encoding="utf-8") as f:
            tagdict: dict[str, str] = json.load(f)["tagdict"]
    except Exception:  # noqa: BLE001 - optional source: any failure means "not available"
        return {}
    wanted = {"NN": "noun", "NNS": "nouns", "JJ": "adj", "VBG": "ing", "RB": "adv"}
    out: dict[str, list[str]] = {v: [] for v in wanted.values()}
    for word, tag in sorted(tagdict.items()):
        if tag in wanted and word.isalpha() and word.islower() and 3 <= len(word) <= 14:
            if tag == "RB" and not word.endswith("ly"):
                continue
            out[wanted[tag]].append(word)
    return {k: tuple(v) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# templates

# Slots: {name} {name2} {full} {surname} {title} {city} {city2} {country} {day} {month} {color}
# {obj} {objs} {food} {foods} {animal} {animals} {job} {jobs} {place} {thing} {idea} {nature}
# {adj} {adj2} {adv} {v} {vs} {ved} {ven} {ving} {iv} {ivs} {ived} {iving}
# {num} {small} {big} {year} {ord} {time} {money} {pct} {dec} {phone} {dur}
# An "a" or "A" before a slot becomes "an" when the filled word starts with a vowel sound.

STATEMENTS = [
    "{name} {ved} the {adj} {obj} before breakfast.",
    "The {job} {ved} {small} {objs} for the {place}.",
    "My {adj} {animal} sleeps under the {obj} every afternoon.",
    "We {ved} {num} {foods} at the market on {day}.",
    "{full} moved to {city} in {year}.",
    "There are {num} {animals} living near the {place}.",
    "The {nature} was {adj} and {adj2} that morning.",
    "{name} and {name2} {ved} the {obj} {adv}.",
    "Our train leaves {city} at {time}.",
    "The {obj} costs {money}.",
    "About {pct} of the {jobs} in {country} work on weekends.",
    "The recipe calls for {dec} cups of {food}.",
    "{title} {surname} will see you on {day}, the {ord} of {month}.",
    "Please call me back at {phone}.",
    "A {adj} {animal} {ivs} across the {place}.",
    "The {jobs} {ived} when the {nature} began.",
    "I {adv} {v} my {obj} on {day} mornings.",
    "Her {adj} {obj} was {ven} by a {job} from {city}.",
    "The {place} opens at {time} and closes at {time2}.",
    "It took {dur} to {v} the {obj}.",
    "{name} was born on the {ord} of {month}, {year}.",
    "The {adj} {job} {ved} a {obj} made of {color} glass.",
    "Nobody {ved} the {adj} {obj} in the {place}.",
    "The {animals} were {iving} near the {nature}.",
    "{name} {vs} {foods} for the whole family every {day}.",
    "The old {obj} in the {place} is {adj} but {adj2}.",
    "Last {month}, {name} {ived} all the way to {city}.",
    "Every {job} in {city} knows the story of the {adj} {animal}.",
    "There is a {adj} {obj} on the {color} {obj2}.",
    "The meeting about the {idea} lasted {dur}.",
    "{name} keeps {small} {color} {objs} in a {obj}.",
    "The {nature} over {city} turned {color} at sunset.",
    "{full} has been a {job} for {small} years.",
    "We found a {obj} hidden behind the {obj2}.",
    "The price went up from {money} to {money2}.",
    "My {job} said the {idea} was {adj}.",
    "In {year}, the {place} had {big} visitors.",
    "The {animal} {ived} {adv} under the {adj} {nature}.",
    "{name} finally {ved} the {obj} that {name2} {ved2}.",
    "The {adj} {foods} from {country} are {adj2}.",
    "Room {num} is on the {ord} floor.",
    "The {jobs} {ved} the {objs} and then {ived}.",
    "Bring a {obj}, a {obj2}, and {small} {foods}.",
    "{name} likes {ving} {foods} while {name2} prefers {ving2} {objs}.",
    "The temperature dropped to {small} degrees by {time}.",
    "Flight {num} to {city} is delayed by {dur}.",
    "The {adj} {job} from {country} {ved} our {obj}.",
    "I left my {obj} at the {place} in {city}.",
    "The {animals} and the {animals2} share the {adj} {place}.",
    "A {color} {obj} lay beside the {adj} {obj2}.",
]

QUESTIONS = [
    "Did {name} {v} the {obj} yesterday?",
    "Where did you put the {adj} {obj}?",
    "How many {animals} live in the {place}?",
    "Why is the {obj} so {adj}?",
    "Have you ever been to {city}?",
    "What time does the {place} open on {day}?",
    "Could you {v} the {obj} for me, please?",
    "Is {name} still working as a {job} in {city}?",
    "Who {ved} the {adj} {obj} from the {place}?",
    "Would you rather visit {country} or {country2}?",
    "When was the {adj} {place} built?",
    "Can {animals} really {iv}?",
    "Do you know why the {nature} is {color} today?",
    "Which {obj} belongs to {name}?",
    "How much does a {adj} {obj} cost in {city}?",
    "What did the {job} say about the {idea}?",
    "Are the {foods} {adj} enough?",
    "Shall we meet at {time} near the {place}?",
    "Is it true that {name} {ved} {num} {objs}?",
    "Where were you on the {ord} of {month}?",
    "Why did the {animal} {iv} so {adv}?",
    "Who taught {name} to {v} {objs}?",
    "How long does it take to {v} a {obj}?",
    "What is the {sup} thing you have ever {ven}?",
    "Is the {place} in {city} still {adj}?",
]

EXCLAMATIONS = [
    "What a {adj} {obj}!",
    "Look at that {adj} {animal}!",
    "Watch out for the {obj}!",
    "{name}, come and see the {nature}!",
    "Hurry up, the {place} closes at {time}!",
    "Oh no, the {foods} are {adj}!",
    "Congratulations on your {adj} {idea}, {name}!",
    "Don't {v} the {obj}!",
    "That was the {sup} {idea} ever!",
    "Wow, {num} {animals}!",
]

QUOTES = [
    "\"{Sentence}\" said {name}.",
    "{name} whispered, \"{Sentence}\"",
    "\"{Question}\" asked the {job}.",
    "According to {title} {surname}, {sentence}",
]

CONNECTORS = [", and ", ", but ", " because ", ", so ", " while ", ", although ", " when ", " after ",
              " before ", ", yet ", " until ", " since "]

SHORT = [
    "Yes, of course.", "No, thank you.", "Good morning, {name}.", "See you on {day}.", "{name} {ived}.",
    "It is {time}.", "Not today.", "Thanks, {name}!", "I {v} {objs}.", "Welcome to {city}.",
    "That costs {money}.", "Turn left at the {place}.", "Happy birthday, {name}!", "Take the {adj} {obj}.",
    "The {animals} {iv}.", "Maybe later.", "Call {name}.", "It was {adj}.", "{small} {objs}, please.",
    "Wait for me!", "Right here.", "All done.", "{month} {ord}.", "Just {num}.", "Nice {obj}!",
]

_TIME_WORDS = ["o'clock", "fifteen", "thirty", "forty five", "oh five", "twenty", "ten", "fifty"]


def _time(r: random.Random) -> str:
    h = r.randint(1, 12)
    kind = r.random()
    if kind < 0.15:
        return f"quarter past {number_words(h)}"
    if kind < 0.25:
        return f"half past {number_words(h)}"
    if kind < 0.3:
        return "noon" if r.random() < 0.5 else "midnight"
    m = r.choice(_TIME_WORDS)
    ampm = r.choice(["", "", " in the morning", " in the evening", " a m", " p m"])
    return f"{number_words(h)} {m}{ampm}"


def _money(r: random.Random) -> str:
    dollars = r.choice([r.randint(1, 20), r.randint(1, 99), r.randint(100, 999), r.randint(1000, 50000)])
    if r.random() < 0.4:
        cents = r.randint(1, 99)
        return f"{number_words(dollars)} dollars and {number_words(cents)} cents"
    unit = r.choice(["dollars", "dollars", "euros", "pounds"])
    return f"{number_words(dollars)} {unit}" if dollars != 1 else f"one {unit[:-1]}"


def _duration(r: random.Random) -> str:
    n = r.randint(2, 59)
    unit = r.choice(["minutes", "hours", "days", "weeks", "seconds"])
    return r.choice([f"{number_words(n)} {unit}", "about an hour", "half a day", f"{number_words(n)} {unit}"])


def _phone(r: random.Random) -> str:
    digits = [r.randint(0, 9) for _ in range(10)]
    say = ["oh" if d == 0 and r.random() < 0.5 else _ONES[d] for d in digits]
    return f"{' '.join(say[:3])}, {' '.join(say[3:6])}, {' '.join(say[6:])}"


class _Filler:
    """Fills template slots from the vocabulary with one seeded random generator."""

    def __init__(self, r: random.Random, ext: dict[str, tuple[str, ...]], ext_share: float) -> None:
        self.r, self.ext, self.ext_share = r, ext, ext_share

    def _pick(self, base: list[str] | tuple[str, ...], ext_key: str | None = None) -> str:
        pool = self.ext.get(ext_key or "", ())
        if pool and self.r.random() < self.ext_share:
            return self.r.choice(pool)
        return self.r.choice(base)

    def slot(self, key: str) -> str:
        r = self.r
        base = key.rstrip("0123456789")
        verb, iverb = r.choice(VERBS), r.choice(INTRANSITIVE)
        table = {
            "name": lambda: r.choice(NAMES),
            "surname": lambda: r.choice(SURNAMES),
            "full": lambda: f"{r.choice(NAMES)} {r.choice(SURNAMES)}",
            "title": lambda: r.choice(TITLES),
            "city": lambda: r.choice(CITIES),
            "country": lambda: r.choice(COUNTRIES),
            "day": lambda: r.choice(DAYS),
            "month": lambda: r.choice(MONTHS),
            "color": lambda: r.choice(COLORS),
            "obj": lambda: self._pick(OBJECTS, "noun"),
            "objs": lambda: self._plural_pick(OBJECTS),
            "thing": lambda: self._pick(OBJECTS + ABSTRACT, "noun"),
            "food": lambda: r.choice(FOODS),
            "foods": lambda: plural(r.choice(FOODS)),
            "animal": lambda: r.choice(ANIMALS),
            "animals": lambda: plural(r.choice(ANIMALS)),
            "job": lambda: r.choice(JOBS),
            "jobs": lambda: plural(r.choice(JOBS)),
            "place": lambda: r.choice(PLACES),
            "idea": lambda: self._pick(ABSTRACT, "noun"),
            "nature": lambda: r.choice(NATURE),
            "adj": lambda: self._pick(ADJECTIVES, "adj"),
            "adv": lambda: self._pick(ADVERBS, "adv"),
            "sup": lambda: superlative(r.choice(ADJECTIVES)),
            "v": lambda: verb[0],
            "vs": lambda: verb[1],
            "ved": lambda: verb[2],
            "ven": lambda: verb[3],
            "ving": lambda: self._pick([verb[4]], "ing"),
            "iv": lambda: iverb[0],
            "ivs": lambda: iverb[1],
            "ived": lambda: iverb[2],
            "iving": lambda: iverb[3],
            "num": lambda: number_words(r.choice([r.randint(2, 20), r.randint(21, 99), r.randint(100, 999)])),
            "small": lambda: number_words(r.randint(2, 12)),
            "big": lambda: number_words(r.choice([r.randint(1000, 99999), r.randint(100000, 9999999)])),
            "year": lambda: year_words(r.randint(1700, 2030)),
            "ord": lambda: ordinal_words(r.randint(1, 31)),
            "time": lambda: _time(r),
            "money": lambda: _money(r),
            "pct": lambda: number_words(r.randint(2, 99)) + " percent",
            "dec": lambda: f"{number_words(r.randint(0, 9))} point {_ONES[r.randint(1, 9)]}",
            "phone": lambda: _phone(r),
            "dur": lambda: _duration(r),
        }
        if base not in table:
            raise KeyError(f"unknown template slot {{{key}}}")
        return table[base]()

    def _plural_pick(self, base: list[str]) -> str:
        pool = self.ext.get("nouns", ())
        if pool and self.r.random() < self.ext_share:
            return self.r.choice(pool)
        return plural(self.r.choice(base))

    def fill(self, template: str) -> str:
        """Fill every slot (a repeated slot name gets the same word) and fix a/an."""
        values: dict[str, str] = {}

        def sub(m: re.Match[str]) -> str:
            key = m.group(1)
            if key not in values:
                values[key] = self.slot(key)
            return values[key]

        text = re.sub(r"\{(\w+)\}", sub, template)
        return re.sub(r"\b([Aa]) (\w+)", lambda m: _fix_article(m.group(1), m.group(2)), text)


def _fix_article(a: str, word: str) -> str:
    art = _article(word) if len(word) > 1 else "a"  # "a m" (the time) stays as it is
    return (art if a == "a" else art.capitalize()) + " " + word


def superlative(adj: str) -> str:
    """"-est" form for short adjectives, "most ..." for long ones."""
    if len(adj) > 6 or adj.endswith(("ful", "ous", "ive", "ing", "ed", "ic", "al")):
        return "most " + adj
    if adj.endswith("y"):
        return adj[:-1] + "iest"
    if adj.endswith("e"):
        return adj + "st"
    if re.fullmatch(r"[^aeiou]*[aeiou][^aeiouwxy]", adj):
        return adj + adj[-1] + "est"
    return adj + "est"


def _capitalise(text: str) -> str:
    for i, ch in enumerate(text):
        if ch.isalpha():
            return text[:i] + ch.upper() + text[i + 1:]
    return text


def sentence_key(text: str) -> str:
    """Comparison key: lowercase words only (punctuation and spacing ignored)."""
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def load_heldout(path: str | Path = HELDOUT_PATH) -> list[str]:
    """The held-out evaluation sentences (one a line, blank lines and # comments skipped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]


_PROPER = frozenset(NAMES + CITIES + COUNTRIES + MONTHS + DAYS + TITLES + ["I"])


def _one_sentence(f: _Filler) -> str:
    r = f.r
    kind = r.random()
    if kind < 0.12:
        text = f.fill(r.choice(SHORT))
    elif kind < 0.52:
        text = f.fill(r.choice(STATEMENTS))
    elif kind < 0.72:
        text = f.fill(r.choice(QUESTIONS))
    elif kind < 0.78:
        text = f.fill(r.choice(EXCLAMATIONS))
    elif kind < 0.85:
        quote = r.choice(QUOTES)
        inner_s = f.fill(r.choice(STATEMENTS)).rstrip(".")
        inner_q = f.fill(r.choice(QUESTIONS))
        lowered = inner_s if inner_s.split(" ", 1)[0] in _PROPER else inner_s[0].lower() + inner_s[1:]
        text = f.fill(quote.replace("{Sentence}", "@S@").replace("{Question}", "@Q@").replace("{sentence}", "@s@"))
        text = text.replace("@S@", inner_s + ".").replace("@Q@", inner_q).replace("@s@", lowered + ".")
    else:  # a long compound sentence
        a = f.fill(r.choice(STATEMENTS)).rstrip(".!")
        b = f.fill(r.choice(STATEMENTS)).rstrip(".!")
        b = b if b.split(" ", 1)[0] in _PROPER else b[0].lower() + b[1:]
        text = a + r.choice(CONNECTORS) + b + "."
    return _capitalise(text)


def sentence_set(n: int, seed: int = 0, *, extended_vocab: bool = True, ext_share: float = 0.35,
                 exclude: list[str] | None = None) -> list[str]:
    """`n` distinct generated sentences, the same list for the same seed.

    `exclude` (default: the held-out set) lists sentences that must never appear.
    """
    exclude = load_heldout() if exclude is None else exclude
    banned = {sentence_key(s) for s in exclude}
    ext = extended_vocabulary() if extended_vocab else {}
    filler = _Filler(random.Random(seed), ext, ext_share)
    out: list[str] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise RuntimeError(f"could only generate {len(out)} distinct sentences of {n}")
        text = _one_sentence(filler)
        key = sentence_key(text)
        if key in seen or key in banned:
            continue
        seen.add(key)
        out.append(text)
    return out


def iter_words(texts: list[str]) -> Iterator[str]:
    """Lowercase words of the texts (for vocabulary statistics)."""
    for t in texts:
        yield from re.findall(r"[a-z']+", t.lower())
