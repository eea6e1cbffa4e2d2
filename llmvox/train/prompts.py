"""Everyday questions for the LLM to answer (VoiceAssistant-style), seeded and reproducible.

The LLMVoX paper trained on a voice assistant's answers; here a small LLM answers generated
questions: topics x question templates, plus some stand-alone questions. The answers, not the
questions, become training speech, so what matters is that the questions pull the model across many
subjects (and so many words).
"""

from __future__ import annotations

import random

# noun phrases that read well after "about", "with", "for" ...
TOPICS = [
    "making coffee at home", "baking bread", "growing tomatoes", "caring for a puppy", "training a cat",
    "saving money", "planning a budget", "learning a new language", "studying for exams", "sleeping better",
    "running a marathon", "starting to swim", "riding a bicycle in the city", "cooking rice", "making soup",
    "brewing green tea", "keeping houseplants alive", "cleaning a kitchen", "doing laundry", "ironing shirts",
    "packing for a trip", "traveling by train", "visiting Japan", "camping in the mountains", "hiking safely",
    "watching the stars", "the phases of the moon", "the solar system", "volcanoes", "earthquakes",
    "rainbows", "thunderstorms", "the ocean tides", "coral reefs", "penguins", "elephants", "honey bees",
    "dinosaurs", "the human heart", "the brain", "healthy breakfasts", "drinking enough water",
    "stretching after exercise", "yoga for beginners", "meditation", "writing a cover letter",
    "preparing for a job interview", "asking for a raise", "working from home", "managing time",
    "writing a short story", "reading more books", "learning to play the guitar", "singing in tune",
    "painting with watercolors", "taking better photos", "choosing a laptop", "protecting passwords",
    "backing up photos", "how the internet works", "electric cars", "solar panels", "recycling plastic",
    "composting kitchen scraps", "saving energy at home", "fixing a leaky faucet", "painting a room",
    "hanging a picture", "moving to a new city", "making new friends", "planning a birthday party",
    "writing a thank you note", "hosting a dinner", "setting a table", "table manners", "tipping at restaurants",
    "ordering food in Italy", "the history of pizza", "chocolate", "cheese making", "the Roman Empire",
    "ancient Egypt", "the printing press", "the first airplane", "the moon landing", "the Olympic Games",
    "soccer rules", "playing chess", "card games", "board games for families", "keeping a journal",
    "public speaking", "staying calm before a test", "getting up early", "taking a nap", "jet lag",
    "seasonal allergies", "catching a cold", "washing hands", "first aid for a small cut", "sunscreen",
    "choosing running shoes", "buying a used car", "driving in snow", "changing a flat tire",
    "taking the bus", "reading a map", "using a compass", "birds in the garden", "feeding ducks",
    "whales", "octopuses", "butterflies", "autumn leaves", "snowflakes", "the water cycle", "clouds",
    "wind energy", "how a refrigerator works", "how a microwave works", "how airplanes fly",
    "how bridges stay up", "how glasses help you see", "why the sky is blue", "why we dream",
    "why cats purr", "why leaves change color", "the seasons", "time zones", "leap years", "calendars",
    "the metric system", "fractions", "multiplication tricks", "saving for retirement", "credit cards",
    "online shopping safely", "returning a gift", "wrapping presents", "knitting a scarf", "sewing a button",
    "making pancakes", "roasting vegetables", "grilling fish", "making a salad dressing", "storing fresh herbs",
    "packing a school lunch", "helping kids with homework", "reading bedtime stories", "teaching a child to ride a bike",
    "adopting a rescue dog", "keeping fish in an aquarium", "visiting a museum", "going to the theater",
    "classical music", "jazz", "learning to dance", "writing poetry", "keeping a garden in winter",
]

TEMPLATES = [
    "Can you give me a few tips about {t}?",
    "What should a beginner know about {t}?",
    "Explain {t} to me in simple terms.",
    "What are the most common mistakes people make with {t}?",
    "Why is {t} important?",
    "Tell me something interesting about {t}.",
    "How do I get started with {t}?",
    "What is the best way to approach {t}?",
    "I am nervous about {t}. Any advice?",
    "Could you describe {t} in a few sentences?",
    "What do experts say about {t}?",
    "Give me a quick overview of {t}.",
    "How would you explain {t} to a ten year old?",
    "What are two or three facts about {t} that most people don't know?",
    "Is {t} difficult? What helps?",
    "My friend asked me about {t}. What should I tell her?",
    "What's a fun fact about {t}?",
    "How much time does {t} usually take?",
    "What equipment do I need for {t}?",
    "Can you share a short story about {t}?",
    "What are the benefits of {t}?",
    "Summarize the basics of {t}.",
    "What should I avoid when it comes to {t}?",
    "Please give me some advice on {t}.",
]

STANDALONE = [
    "What's a good way to start my morning?", "How can I be more productive today?",
    "What should I cook for dinner tonight?", "Can you recommend a hobby for a rainy day?",
    "How do I fall asleep faster?", "What are some easy ways to reduce stress?",
    "How can I make my apartment feel cozier?", "What's a good gift for my grandmother?",
    "How do I politely say no to a favor?", "What should I do on a free Saturday?",
    "How do I remember people's names?", "What are some good questions to ask on a first date?",
    "How can I drink less coffee?", "What is a healthy snack I can take to work?",
    "How do I keep my phone battery healthy?", "What's the difference between weather and climate?",
    "How far away is the moon?", "Why do we have different time zones?",
    "How do I calm down after an argument?", "What makes a good friend?",
    "How can I learn to cook without recipes?", "What should I pack for a beach day?",
    "How do I choose a good watermelon?", "What are some fun things to do with kids indoors?",
    "How do I get better at small talk?", "Why do onions make you cry?",
    "How can I stay motivated to exercise?", "What is the best way to learn new words?",
    "How do I clean a cast iron pan?", "What should I do if I feel lonely?",
    "How do airplanes stay in the air?", "How do I make a cup of tea properly?",
    "What is a good name for a goldfish?", "How can I be a better listener?",
    "What are some tips for a long car ride?", "How do I start a vegetable garden on a balcony?",
    "Why is exercise good for the brain?", "How do I write a good email to my boss?",
    "What's something interesting I could learn in ten minutes?", "Tell me a short bedtime story.",
    "Tell me a joke about vegetables.", "Describe a perfect summer day.",
    "What is the tallest mountain in the world?", "How do rainbows form?",
    "What can I do to help the environment?", "How do I keep my plants alive while I'm on vacation?",
    "What is a simple recipe with eggs?", "How do I tell if milk has gone bad?",
    "What's the best way to learn to type faster?", "How do I prepare for a long flight?",
]


def prompt_set(n: int, seed: int = 0, standalone_share: float = 0.15) -> list[str]:
    """`n` prompts, the same list for the same seed (distinct until the pool is exhausted)."""
    r = random.Random(seed)
    pool = [tpl.format(t=topic) for topic in TOPICS for tpl in TEMPLATES]
    r.shuffle(pool)
    standalone = list(STANDALONE)
    r.shuffle(standalone)
    out: list[str] = []
    i = j = 0
    while len(out) < n:
        if standalone and r.random() < standalone_share and j < len(standalone):
            out.append(standalone[j])
            j += 1
        else:
            out.append(pool[i % len(pool)])
            i += 1
    return out
