"""What the generated sentences (`llmvox.train.sentences`) are made of: hand-written word lists and
sentence templates.

The lists are deliberately broad (names, places, concrete and abstract nouns, adjectives, verbs with
all their forms) so the voice hears many distinct words; the templates mix statements, questions,
exclamations, quotes and short replies. The order of every list is part of the seeded stream: the
same seed gives the same sentences only while these lists stay as they are.
"""

from __future__ import annotations

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

# concrete nouns (singular); plurals are formed by `llmvox.train.sentences.plural`
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
