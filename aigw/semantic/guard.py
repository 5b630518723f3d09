"""Hard-negative guard: may a cached answer serve a new question the embedder finds similar?

Why a guard at all: the embedder scores questions that differ in one answer-determining detail
as high as true paraphrases ("track order 48213" vs "48231" 0.99, "safe" vs "unsafe" 0.95+,
从A到B vs 从B到A 0.998), so no threshold separates them (../shared/reference, §1.5).

How: :func:`check` analyses each question once (cached, see :func:`analyse`) into a few small
bags (numbers, negations, lexicon terms, entity names, relation pairs, script) and compares the
*difference* between the two bags, never the whole sentence: a paraphrase keeps its numbers,
negations, names and directions while it rewords everything else, so only what one question has
and the other lacks can change the answer. Each rule returns a short reason that is logged and
counted; :class:`GuardConfig` switches rules off one by one.

Rules (reason in brackets):

* ``language`` [language]: the dominant script differs (Chinese vs English vs Japanese vs Korean);
  an answer in one language never serves a question in another.
* ``numbers`` [number mismatch, unit mismatch]: the multiset of numbers differs (Arabic digits,
  English number words, Roman numerals after a name, Chinese numerals incl. 两/万/亿, ordinals
  first/2nd/第一; digits glued to letters count too: v1, q12, A17, 5mg, 10GB; 7am and 7pm are
  different times, "7 p.m." = "7pm"); or a unit is swapped within its dimension (days vs
  weeks, km vs miles).
  Idioms are not numbers (一下/一些/一点/一起/统一/万一/十分...); a lone "one"/一 (an article
  more than a count) is ignored when the other side has no number in its place.
* ``negation`` [negation]: a different count of negators (not, n't, never, no, without,
  不/没/无/非/未/别...), with the Chinese A-not-A question forms (是不是, 有没有, 能不能) and
  compounds that only look negative (非常, 未来, 是否, 不过, 别人, 不同) removed first; or a
  word against its negative-prefix form (safe/unsafe, legal/illegal, agree/disagree).
* ``antonyms`` [antonym]: one question has more of a lexicon term and the other more of a
  contrasting term of the same group (buy/sell, rise/fall, 买入/卖出, 上涨/下跌, today/
  tomorrow, harmless/harmful...). The crossing test keeps compounds that hold both (买卖) safe.
* ``entities`` [entity]: a name present in one question and absent from the other: capitalised
  or all-caps words not at a sentence start, known lists (countries, cities, weekdays, planets,
  languages, products) in both languages, Latin words inside Chinese text. Names are normalised
  (case, possessive, plural/inflection: "Mondays" = "Monday"; aliases: US = USA = United States
  = America, NYC = New York (City), UK = United Kingdom = Britain) and an acronym matches its
  spelled-out form (API = application programming interface). Number words are never names
  ("the Second World War" = "the 2nd World War"); the numbers rule compares them.
* ``direction`` [direction]: the same two things on opposite sides of a relation marker
  (to/into/than/from, →; 到/成/比/给/至): miles→km vs km→miles, 从A到B vs 从B到A.

Pure Python, no network; about 65 µs per new pair (mean over the tuning set), ~3 µs when both
texts were seen before.
"""

# Full-width punctuation and CJK characters below are meant (RUF001 assumes a Latin look-alike).
# ruff: noqa: RUF001

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from aigw.config import Settings

__all__ = ["Analysis", "Guard", "GuardConfig", "analyse", "check"]


class GuardConfig(Settings):
    """Which guard rules run (all on by default; a rule off never rejects).

    ``language``: script/language must match. ``numbers``: numbers, ordinals and units.
    ``negation``: negators and negative prefixes. ``antonyms``: the bilingual contrast lexicon.
    ``entities``: names (capitalised words, known lists). ``direction``: A-to-B vs B-to-A.
    """

    language: bool = True
    numbers: bool = True
    negation: bool = True
    antonyms: bool = True
    entities: bool = True
    direction: bool = True

    def enabled(self) -> list[str]:
        """The names of the rules that run, in the order they run (for ``aigw check``)."""
        return [name for name in _RULE_ORDER if getattr(self, name)]


_RULE_ORDER = ("language", "numbers", "negation", "antonyms", "entities", "direction")


# --------------------------------------------------------------------------------------------
# English normalisation
# --------------------------------------------------------------------------------------------

_IRREGULAR = {
    "rose": "rise",
    "risen": "rise",
    "fell": "fall",
    "fallen": "fall",
    "bought": "buy",
    "sold": "sell",
    "won": "win",
    "lost": "lose",
    "better": "good",
    "best": "good",
    "worse": "bad",
    "worst": "bad",
    "feet": "foot",
    "men": "man",
    "women": "woman",
    "children": "child",
    "mice": "mouse",
    "went": "go",
    "gone": "go",
    "began": "begin",
    "begun": "begin",
    "kilometres": "kilometer",
    "kilometre": "kilometer",
    "metres": "meter",
    "metre": "meter",
    "litres": "liter",
    "litre": "liter",
}


def _stem(word: str) -> str:
    """A crude, deterministic stemmer: the same word form on both sides is all that matters.

    Why so crude: it only has to map inflections of one word together (Mondays/Monday,
    rises/rising/rose, increased/increase); both questions and every lexicon entry go through it,
    so its mistakes cancel out. A final ``e`` is dropped so increase/increasing/increased meet.
    """
    w = word.lower()
    if w in _IRREGULAR:
        w = _IRREGULAR[w]
    if len(w) > 4 and w.endswith("ies"):
        w = w[:-3] + "y"
    elif len(w) > 4 and w.endswith(("sses", "ches", "shes", "xes")):
        w = w[:-2]
    elif len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is", "os")):
        w = w[:-1]
    if len(w) > 5 and w.endswith("ing"):
        w = w[:-3]
        if len(w) > 2 and w[-1] == w[-2] and w[-1] not in "lsz":
            w = w[:-1]
    elif len(w) > 4 and w.endswith("ed"):
        w = w[:-2]
        if len(w) > 2 and w[-1] == w[-2] and w[-1] not in "lsz":
            w = w[:-1]
    if len(w) > 3 and w.endswith("e"):
        w = w[:-1]
    return w


def _words(text: str) -> list[str]:
    """Split a whitespace-separated word list (keeps the long lexicons readable)."""
    return text.split()


# Function words: never names, never relation anchors.
_STOP = frozenset(
    _words(
        """a an the of in on at for with by about as is are was were be been being am do does did
    done have has had having i me my we our you your he she it its they them their this that
    these those what which who whom whose when where why how there here can could will would
    shall should may might must and or but if then so than too very just also please tell
    explain give show describe any some all each every much many more most other such
    own same s t d ll m re ve get got into onto from to up out"""
    )
)

# Sentence-initial capitals that are never names (imperatives, question words, auxiliaries).
_CONTRACTION_NOT = {"can't": "can", "won't": "will", "shan't": "shall", "ain't": "be"}

_NEG_WORDS = frozenset(
    {"not", "no", "never", "none", "nothing", "nobody", "nowhere", "neither", "nor"}
    | {"without", "cannot", "unable", "non"}
)
# A word is the negative of another when it is the other with one of these prefixes.
_NEG_PREFIXES = ("un", "in", "im", "il", "ir", "dis", "non", "de", "anti", "mis")

# --------------------------------------------------------------------------------------------
# Lexicons. Contrast groups: two *different* members crossing between the questions = reason.
# --------------------------------------------------------------------------------------------

# A group lists *sides*; synonyms share a side ("/"), two terms on different sides contrast.
_EN_ANTONYMS: tuple[tuple[str, ...], ...] = (
    ("buy/purchase", "sell"),
    ("increase/raise/grow", "decrease/reduce/lower/cut/shrink"),
    ("rise/climb", "fall/drop/decline/sink"),
    ("up", "down"),
    ("on", "off"),
    ("in", "out"),
    ("open", "close/shut"),
    ("upload", "download"),
    ("import", "export"),
    ("input", "output"),
    ("encrypt", "decrypt"),
    ("compress/zip", "decompress/unzip/extract"),
    ("add/insert/append", "remove/delete/subtract"),
    ("plus", "minus"),
    ("before", "after"),
    ("pros/advantage/benefit", "cons/disadvantage/drawback/downside"),
    ("min/minimum", "max/maximum"),
    ("largest/biggest/highest/tallest", "smallest/lowest/shortest"),
    ("high", "low"),
    ("good", "bad"),
    ("most", "least"),
    ("more", "less/fewer"),
    ("cheap/cheapest", "expensive/priciest"),
    ("fast/faster/fastest/quick", "slow/slower/slowest"),
    ("hot/warm", "cold/cool"),
    ("heat", "cool"),
    ("win", "lose"),
    ("gain/profit", "loss"),
    ("push", "pull"),
    ("send", "receive"),
    ("start/begin", "stop/end/finish"),
    ("login", "logout"),
    ("long", "short"),
    ("young", "old"),
    ("new", "old"),
    ("male/man/boy", "female/woman/girl"),
    ("true", "false"),
    ("pass", "fail"),
    ("success", "failure"),
    ("accept/approve", "reject/decline/deny"),
    ("allow/permit", "deny/block/forbid/prohibit"),
    ("include", "exclude"),
    ("inside", "outside"),
    ("above", "below"),
    ("over", "under"),
    ("north", "south"),
    ("east", "west"),
    ("left", "right"),
    ("first", "last"),
    ("earliest", "latest"),
    ("early", "late"),
    ("past", "future"),
    ("positive", "negative"),
    ("strong", "weak"),
    ("heavy", "light"),
    ("wet", "dry"),
    ("easy/simple", "hard/difficult"),
    ("like/love", "hate/dislike"),
    ("happy", "sad"),
    ("rich", "poor"),
    ("safe", "dangerous/risky/harmful"),
    ("healthy", "unhealthy/harmful"),
    ("harmless", "harmful"),
    ("useful", "useless"),
    ("ascending", "descending"),
    ("upper/uppercase", "lower/lowercase"),
    ("sunrise", "sunset"),
    ("summer", "winter"),
    ("spring", "autumn/fall"),
    ("day", "night"),
    ("morning", "evening", "afternoon", "night"),
    ("borrow", "lend"),
    ("deposit", "withdraw"),
    ("credit", "debit"),
    ("inbound", "outbound"),
    ("client", "server"),
    ("frontend", "backend"),
    ("today", "tomorrow", "yesterday"),
    ("weekday", "weekend"),
    ("arrive/arrival", "depart/departure/leave"),
    ("enable", "disable"),
    ("install", "uninstall"),
    ("attack/offense", "defend/defense"),
    ("wide", "narrow"),
    ("thick", "thin"),
    ("big/large", "small/tiny"),
    ("tall", "short"),
    ("legal", "illegal"),
    ("mean/average", "median", "mode"),
    ("synonym", "antonym"),
    ("vertical", "horizontal"),
    ("inner", "outer"),
    ("front", "back/rear"),
    ("top", "bottom"),
    ("maximize", "minimize"),
    ("always", "sometimes", "rarely", "never"),
)

_EN_UNITS: dict[str, tuple[str, ...]] = {
    "time": ("second", "sec", "minute", "min", "hour", "hr", "day", "week", "month", "year"),
    "length": (
        "mm",
        "cm",
        "meter",
        "km",
        "kilometer",
        "mile",
        "inch",
        "foot",
        "ft",
        "yard",
        "centimeter",
        "millimeter",
    ),
    "mass": ("gram", "kg", "kilogram", "pound", "lb", "ounce", "oz", "ton", "tonne"),
    "temperature": ("celsius", "fahrenheit", "kelvin"),
    "volume": ("liter", "ml", "milliliter", "gallon", "cup", "pint", "quart"),
    "currency": ("dollar", "usd", "euro", "eur", "yuan", "rmb", "cny", "yen", "jpy", "gbp"),
    "data": ("kb", "mb", "gb", "tb", "byte", "bit", "kilobyte", "megabyte", "gigabyte"),
    "speed": ("mph", "kph", "kmh"),
}

# Known names (lower case). Canonical aliases map several spellings to one name.
_EN_ALIASES = {
    "us": "usa",
    "america": "usa",
    "uk": "britain",
    "hk": "hongkong",
    "england": "britain",
    "js": "javascript",
    "ts": "typescript",
    "py": "python",
    "postgres": "postgresql",
    "golang": "go",
    "nyc": "new york",
    "mon": "monday",
    "tue": "tuesday",
    "wed": "wednesday",
    "thu": "thursday",
    "fri": "friday",
    "sat": "saturday",
    "sun": "sunday",
}
_EN_KNOWN = frozenset(
    _words(
        """monday tuesday wednesday thursday friday saturday sunday january february april june
    july august september october november december france germany italy spain china japan
    korea india russia canada mexico brazil australia egypt britain usa singapore thailand
    vietnam sweden norway finland denmark poland ireland greece turkey israel iran iraq
    argentina chile peru nigeria kenya indonesia pakistan netherlands switzerland austria
    belgium portugal paris london berlin tokyo beijing shanghai madrid rome moscow sydney
    toronto chicago boston seattle amsterdam dubai seoul delhi mumbai europe asia africa
    antarctica mars venus jupiter saturn mercury neptune uranus pluto python java javascript
    typescript rust ruby php perl kotlin scala haskell sql html css bash powershell english
    french german chinese japanese spanish korean russian italian arabic portuguese hindi
    google microsoft amazon tesla nvidia openai facebook netflix linux macos android ios
    ubuntu debian chrome firefox safari mysql postgresql redis mongodb sqlite docker
    kubernetes react vue angular django flask numpy pandas excel iphone"""
    )
)

# Chinese lexicon: term -> (category, payload). Longest match wins, so 星期一 beats 星期 and
# 非常 beats 非.
_ZhEntry = tuple[str, str]
_ZH: dict[str, _ZhEntry] = {}


def _zh_add(category: str, payload: str, terms: Iterable[str]) -> None:
    for term in terms:
        _ZH[term] = (category, payload)


# Compounds that contain a negator or a numeral but are neither (consumed, nothing counted).
_zh_add(
    "neutral",
    "",
    _words(
        """非常 未来 是否 否则 无论 不过 不错 不仅 不但 不断 不久 不少 不管 不论 不如 差不多 不得不
    对不起 了不起 要不然 不然 别人 别的 区别 分别 特别 告别 级别 类别 性别 识别 鉴别 辨别 无数
    不同 有何不同 无线 除非 莫名 无聊 并非不 一下 一些 一点 一样 一起 一直 一般 一定 一切 一致
    一旦 一边 一共 一会 一向 一再 一律 一同 一齐 一味 一时 一贯 一番 一面 一阵 一旁 一心 一流
    一体 统一 唯一 万一 之一 同一 一方面 十分 千万 万分 天气 天空 年龄 年级 年轻 年纪 每年 百科
    百货 小时候 不要紧 没关系 一口气 三明治 关于 关系 关注 相关 关键 开发 开心
    公开 成长 长大 家长 校长 部长 董事长 短信 对于 对比 对象 针对 面对 对方 对应 相对 绝对
    认真 真的 假期 放假 请假 暑假 寒假 假如 假设 快递 快乐 愉快 新闻 更新 重新 创新 东西 马上
    下雨 下雪 上网 还是 还有 还要 还能 还会 还可以 还没 还在 还得 好的 你好 左右 高兴 上面 下面"""
    ),
)
_zh_add("neg", "", _words("不 没 无 非 未 别 勿 莫 否 甭 没有 無 沒"))
_ZH_ANTONYMS: tuple[tuple[str, ...], ...] = (
    ("买入/买/购买/买进", "卖出/卖/出售/卖掉"),
    ("上涨/涨/升高/上升/提高/增加/增长/升/增", "下跌/跌/降低/下降/减少/降/减"),
    ("打开/开启/开机/开", "关闭/关机/关"),
    ("上传", "下载"),
    ("加密", "解密"),
    ("压缩", "解压"),
    ("登录", "退出/登出"),
    ("进口", "出口"),
    ("输入", "输出"),
    ("优点/好处/优势", "缺点/坏处/劣势"),
    ("成功", "失败"),
    ("最大", "最小"),
    ("最高", "最低"),
    ("最多", "最少"),
    ("最快", "最慢"),
    ("最好", "最差/最坏"),
    ("最长", "最短"),
    ("最早", "最晚"),
    ("最贵", "最便宜"),
    ("便宜", "贵"),
    ("高", "低"),
    ("冷", "热"),
    ("快", "慢"),
    ("早", "晚"),
    ("以前/之前", "以后/之后"),
    ("前端", "后端"),
    ("左", "右"),
    ("男", "女"),
    ("加", "减"),
    ("长", "短"),
    ("新", "旧"),
    ("胖", "瘦"),
    ("真", "假"),
    ("对/正确", "错/错误"),
    ("好", "坏"),
    ("安全", "危险"),
    ("合法", "违法/非法"),
    ("东", "西"),
    ("南", "北"),
    ("上", "下"),
    ("出发", "到达"),
    ("借", "还"),
    ("存款/存钱", "取款/取钱"),
    ("收入", "支出"),
    ("盈利", "亏损"),
    ("赢", "输"),
    ("同意/支持", "反对"),
    ("喜欢", "讨厌"),
    ("今天", "明天", "昨天", "后天", "前天"),
    ("今年", "明年", "去年"),
    ("本周/这周", "下周", "上周"),
    ("本月/这个月", "下个月", "上个月"),
    ("早上/上午", "晚上", "中午", "下午"),
    ("白天", "夜里/晚上"),
    ("夏天", "冬天", "春天", "秋天"),
    ("日出", "日落"),
    ("升序", "降序"),
    ("大写", "小写"),
    ("正数", "负数"),
    ("容易/简单", "困难/难"),
    ("客户端", "服务端/服务器"),
    ("平均数", "中位数", "众数"),
    ("同义词", "反义词"),
    ("开始", "结束"),
    ("顺时针", "逆时针"),
    ("有利/有益", "有害"),
)
_Sides = tuple[tuple[int, int], ...]  # (group id, side) of a contrast term


def _build_groups(
    groups: tuple[tuple[str, ...], ...], norm: Callable[[str], str], base: int
) -> dict[str, _Sides]:
    """Term -> the (group, side) pairs it belongs to; ``base`` keeps group ids distinct."""
    out: dict[str, _Sides] = {}
    for gid, group in enumerate(groups, base):
        for side, synonyms in enumerate(group):
            for term in synonyms.split("/"):
                key = norm(term)
                out[key] = (*out.get(key, ()), (gid, side))
    return out


_ZH_GROUPS = _build_groups(_ZH_ANTONYMS, str, 10_000)
_zh_add("ant", "", _ZH_GROUPS)
_ZH_UNITS: dict[str, tuple[str, ...]] = {
    "time": ("秒", "秒钟", "分钟", "小时", "天", "日", "周", "星期", "礼拜", "月", "个月", "年"),
    "length": ("毫米", "厘米", "米", "公里", "千米", "英里", "英寸", "英尺", "码"),
    "mass": ("克", "千克", "公斤", "斤", "磅", "盎司", "吨"),
    "temperature": ("摄氏度", "华氏度", "摄氏", "华氏", "开尔文"),
    "volume": ("升", "毫升", "加仑"),
    "currency": ("元", "块", "块钱", "美元", "欧元", "日元", "英镑", "港币", "人民币", "美金"),
    "data": ("KB", "MB", "GB", "TB", "字节"),
}
for _dim, _terms in _ZH_UNITS.items():
    _zh_add("unit", _dim, _terms)
# Chinese names -> canonical (the English canonical where one exists, so mixed text agrees).
_ZH_ENTITIES = {
    "北京": "beijing",
    "上海": "shanghai",
    "广州": "guangzhou",
    "深圳": "shenzhen",
    "杭州": "hangzhou",
    "成都": "chengdu",
    "南京": "nanjing",
    "武汉": "wuhan",
    "西安": "xian",
    "重庆": "chongqing",
    "天津": "tianjin",
    "苏州": "suzhou",
    "香港": "hongkong",
    "澳门": "macau",
    "台北": "taipei",
    "台湾": "taiwan",
    "长沙": "changsha",
    "青岛": "qingdao",
    "厦门": "xiamen",
    "大连": "dalian",
    "郑州": "zhengzhou",
    "沈阳": "shenyang",
    "哈尔滨": "harbin",
    "昆明": "kunming",
    "拉萨": "lhasa",
    "广东": "guangdong",
    "浙江": "zhejiang",
    "江苏": "jiangsu",
    "四川": "sichuan",
    "湖南": "hunan",
    "湖北": "hubei",
    "山东": "shandong",
    "河南": "henan",
    "河北": "hebei",
    "福建": "fujian",
    "云南": "yunnan",
    "贵州": "guizhou",
    "海南": "hainan",
    "新疆": "xinjiang",
    "西藏": "tibet",
    "中国": "china",
    "美国": "usa",
    "日本": "japan",
    "英国": "britain",
    "法国": "france",
    "德国": "germany",
    "韩国": "korea",
    "俄罗斯": "russia",
    "印度": "india",
    "加拿大": "canada",
    "澳大利亚": "australia",
    "意大利": "italy",
    "西班牙": "spain",
    "巴西": "brazil",
    "墨西哥": "mexico",
    "埃及": "egypt",
    "新加坡": "singapore",
    "泰国": "thailand",
    "越南": "vietnam",
    "欧洲": "europe",
    "亚洲": "asia",
    "非洲": "africa",
    "星期一": "monday",
    "星期二": "tuesday",
    "星期三": "wednesday",
    "星期四": "thursday",
    "星期五": "friday",
    "星期六": "saturday",
    "星期日": "sunday",
    "星期天": "sunday",
    "周一": "monday",
    "周二": "tuesday",
    "周三": "wednesday",
    "周四": "thursday",
    "周五": "friday",
    "周六": "saturday",
    "周日": "sunday",
    "周末": "weekend",
    "礼拜一": "monday",
    "礼拜天": "sunday",
    "礼拜日": "sunday",
    "水星": "mercury",
    "金星": "venus",
    "火星": "mars",
    "木星": "jupiter",
    "土星": "saturn",
    "天王星": "uranus",
    "海王星": "neptune",
    "地球": "earth",
    "月球": "moon",
    "月亮": "moon",
    "太阳": "sun",
    "中文": "chinese",
    "汉语": "chinese",
    "普通话": "chinese",
    "英语": "english",
    "英文": "english",
    "日语": "japanese",
    "日文": "japanese",
    "法语": "french",
    "德语": "german",
    "韩语": "korean",
    "俄语": "russian",
    "西班牙语": "spanish",
    "微信": "wechat",
    "支付宝": "alipay",
    "淘宝": "taobao",
    "京东": "jd",
    "华为": "huawei",
    "腾讯": "tencent",
    "阿里巴巴": "alibaba",
    "百度": "baidu",
    "苹果手机": "iphone",
    "长城": "great wall",
    "故宫": "forbidden city",
    "长江": "yangtze",
    "黄河": "yellow river",
}
for _term, _canon in _ZH_ENTITIES.items():
    _ZH[_term] = ("ent", _canon)
_ZH["十分钟"] = ("num10", "time")  # 十分 is "very", but 十分钟 is ten minutes.
_ZH_MAXLEN = max(len(t) for t in _ZH)

_ZH_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "俩": 2, "三": 3, "四": 4, "五": 5}
_ZH_DIGITS.update({"六": 6, "七": 7, "八": 8, "九": 9})
_ZH_MULT = {"十": 10, "百": 100, "千": 1000, "万": 10_000, "亿": 100_000_000}
_ZH_NUMCHARS = frozenset(_ZH_DIGITS) | frozenset(_ZH_MULT)

_EN_ONES = {
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
    "dozen": 12,
}
_EN_TENS = {
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
}
_EN_MULT = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9, "k": 1000}
_EN_ORD = {
    "first": 1,
    "second": 2,
    "third": 3,
    "fourth": 4,
    "fifth": 5,
    "sixth": 6,
    "seventh": 7,
    "eighth": 8,
    "ninth": 9,
    "tenth": 10,
    "eleventh": 11,
    "twelfth": 12,
    "twentieth": 20,
    "hundredth": 100,
}
_ROMAN = {"i": 1, "v": 5, "x": 10, "l": 50, "c": 100}
_ROMAN_RE = re.compile(r"^(?=[IVXLC])(C{0,3})(XC|XL|L?X{0,3})(IX|IV|V?I{0,3})$")
_AUX = frozenset(_words("can could do does did should would will shall may might must am have"))

# Relation markers: what sits left of one and right of the other decides the answer.
# "from" reverses (to Paris from London = London -> Paris).
_EN_MARKERS = {"to": False, "into": False, "than": False, "→": False, "->": False}
_EN_MARKERS.update({"=>": False, "from": True, "per": False, "in": False})
_ZH_MARKERS = "到至成比给往→"

# A number takes every letter glued to it as its suffix (3rd, 100k, 7pm, 5mg, 10GB): the old
# "no letter may follow" lookahead let the digits backtrack ("10mg" read as 1) or vanish (5mg).
_TOKEN_RE = re.compile(
    r"(?P<num>\d+(?:[.,]\d+)*)(?P<numsuf>[A-Za-z]+)?"
    r"|(?P<word>[A-Za-z][A-Za-z0-9]*(?:['’][A-Za-z]+)?)"
    r"|(?P<cjk>[\u3400-\u9fff\uf900-\ufaff]+)"
    r"|(?P<kana>[\u3040-\u30ff]+)"
    r"|(?P<hangul>[\uac00-\ud7af]+)"
    r"|(?P<arrow>->|→|=>)"
    r"|(?P<punct>[.?!。？！;；,，:：()（）\"“”])"
)
_THOUSANDS_RE = re.compile(r"^\d{1,3}(?:,\d{3})+$")
_DIGITS_RE = re.compile(r"\d+")  # digit runs inside a word (v1, q12, A17, b2b)
_ORD_SUFFIXES = frozenset({"st", "nd", "rd", "th"})
# "7 pm", "7 p.m.", "7 PM" -> "7pm", so the clock half is read as the number's suffix.
_AMPM_RE = re.compile(r"(\d)\s*([AaPp])\.?\s?[Mm]\.?(?![A-Za-z])")
# Multi-word names rewritten to one canonical token before tokenising, so "the United States"
# and "the USA" carry the same entity (a name of two words would otherwise be two names).
_EN_PHRASES = {
    "united states of america": "USA",
    "united states": "USA",
    "u.s.a.": "USA",
    "u.s.a": "USA",
    "u.s.": "USA",
    "united kingdom": "UK",
    "great britain": "UK",
    "u.k.": "UK",
    "new york city": "NYC",
    "new york": "NYC",
    "los angeles": "LA",
    "san francisco": "SF",
    "european union": "EU",
    "united nations": "UN",
    "united arab emirates": "UAE",
    "hong kong": "HK",
    "soviet union": "USSR",
    "washington d.c.": "DC",
    "washington dc": "DC",
}
_PHRASE_RE = re.compile(
    r"(?<![A-Za-z])(?:"
    + "|".join(
        re.escape(k).replace(r"\ ", r"\s+") for k in sorted(_EN_PHRASES, key=len, reverse=True)
    )
    + r")(?![A-Za-z])",
    re.IGNORECASE,
)


def _phrase_sub(m: re.Match[str]) -> str:
    return _EN_PHRASES[" ".join(m.group(0).lower().split())]


_ZH_ANOTA_RE = re.compile(r"([\u4e00-\u9fff]{1,2})[不没]\1")  # 是不是 / 喜欢不喜欢 / 有没有
_ZH_REDUP_RE = re.compile(r"([\u4e00-\u9fff])一\1")  # 看一看 = 看
_ZH_PERCENT_RE = re.compile(r"百分之")


@dataclass(slots=True)
class Analysis:
    """What the guard compares about one question (see the module docstring)."""

    lang: str = "other"
    numbers: Counter[tuple[str, object]] = field(default_factory=Counter)
    soft_ones: int = 0
    negations: int = 0
    neg_prefixed: set[str] = field(default_factory=set)
    contrast: Counter[str] = field(default_factory=Counter)
    contrast_group: dict[str, _Sides] = field(default_factory=dict)
    units: Counter[str] = field(default_factory=Counter)
    unit_dim: dict[str, str] = field(default_factory=dict)
    entities: set[str] = field(default_factory=set)
    tokens: set[str] = field(default_factory=set)
    words: list[str] = field(default_factory=list)
    relations: list[tuple[frozenset[str], frozenset[str]]] = field(default_factory=list)
    zh_relations: list[tuple[str, str]] = field(default_factory=list)


_EN_GROUPS = _build_groups(_EN_ANTONYMS, _stem, 0)
_EN_UNIT_STEMS = {_stem(u): dim for dim, units in _EN_UNITS.items() for u in units}
_EN_KNOWN_STEMS = {_stem(w): w for w in _EN_KNOWN}


def _canon_name(word: str) -> str:
    """Normalise a name: case, possessive, plural/inflection, aliases (US = USA)."""
    w = word.lower().replace("’", "'")
    if w.endswith("'s"):
        w = w[:-2]
    w = w.rstrip("'")
    if w in _EN_ALIASES:
        return _EN_ALIASES[w]
    if w in _EN_KNOWN:
        return w
    s = _stem(w)
    return _EN_KNOWN_STEMS.get(s, s)


def _parse_zh_number(run: str) -> int:
    """Parse a Chinese numeral run (五百, 三万五千, 二零二四, 两千) to an integer."""
    if all(c in _ZH_DIGITS for c in run) and len(run) > 1:
        return int("".join(str(_ZH_DIGITS[c]) for c in run))  # 二零二四: digit by digit
    total = section = digit = 0
    for c in run:
        if c in _ZH_DIGITS:
            digit = _ZH_DIGITS[c]
        else:
            mult = _ZH_MULT[c]
            if mult >= 10_000:
                section = (section + digit) * mult
                total += section
                section = 0
            else:
                section += (digit or 1) * mult
            digit = 0
    return total + section + digit


def _scan_zh(text: str, a: Analysis, offset: int, anchors: list[tuple[int, str]]) -> None:
    """Longest-match scan of one CJK run over the Chinese lexicon and numerals."""
    text = _ZH_ANOTA_RE.sub(r"\1", text)  # A-not-A questions are not negations
    text = _ZH_REDUP_RE.sub(r"\1", text)  # 看一看 is not a count
    text = _ZH_PERCENT_RE.sub("", text)  # 百分之五 = 5 (per cent)
    i, n = 0, len(text)
    while i < n:
        hit = None
        for length in range(min(_ZH_MAXLEN, n - i), 0, -1):
            entry = _ZH.get(text[i : i + length])
            if entry is not None:
                hit = (length, entry)
                break
        if hit is not None:
            length, (cat, payload) = hit
            term = text[i : i + length]
            if cat == "neg":
                a.negations += 1
            elif cat == "ant":
                a.contrast[term] += 1
                a.contrast_group[term] = _ZH_GROUPS[term]
                a.tokens.add(term)
            elif cat == "unit":
                a.units[term] += 1
                a.unit_dim[term] = payload
                a.tokens.add(term)
                anchors.append((offset + i, term))
            elif cat == "ent":
                a.entities.add(payload)
                a.tokens.add(payload)
                anchors.append((offset + i, payload))
            elif cat == "num10":
                a.numbers[("card", 10)] += 1
                a.units["分钟"] += 1
                a.unit_dim["分钟"] = payload
            i += length
            continue
        c = text[i]
        if c in _ZH_NUMCHARS:
            j = i
            while j < n and text[j] in _ZH_NUMCHARS:
                j += 1
            run = text[i:j]
            value = _parse_zh_number(run)
            ordinal = i > 0 and text[i - 1] == "第"
            if ordinal:
                a.numbers[("ord", value)] += 1
            elif run == "一":
                a.soft_ones += 1  # 一个/一种: an article as often as a count
            else:
                a.numbers[("card", value)] += 1
            i = j
            continue
        if "\u4e00" <= c <= "\u9fff":
            a.tokens.add(c)
        i += 1


def _zh_relations(text: str) -> list[tuple[str, str]]:
    """Left and right sides of each Chinese relation marker (从A到B, 把A翻译成B, A比B)."""
    out = []
    clauses = re.split(r"[，。？！,.?!;；：:\s]", text)
    for clause in clauses:
        for k, ch in enumerate(clause):
            if ch in _ZH_MARKERS and 0 < k < len(clause) - 1:
                left = clause[max(0, k - 6) : k]
                for cut in ("从", "把", "将", "由"):
                    pos = left.rfind(cut)
                    if pos >= 0:
                        left = left[pos + 1 :]
                right = clause[k + 1 : k + 7]
                out.append((left, right))
    return out


def _share(a: str, b: str) -> bool:
    """Do two Chinese spans share a name (a common substring of ≥ 2 chars, or a whole span)?"""
    if not a or not b:
        return False
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    if len(short) == 1:  # one character (猫比狗): only at the edge next to the marker
        return long_.startswith(short) or long_.endswith(short)
    return any(short[k : k + 2] in long_ for k in range(len(short) - 1))


def _roman_here(raw: str, text: str, end: int, sentence_start: bool, prev_word: str) -> bool:
    """Is this capital a Roman numeral after a name (World War II), not the pronoun "I"?

    Several letters (II, XIV) after a capitalised word always are. A single letter is only when
    the previous word is a name inside the sentence (not "Can I", "Why can't I") and no word
    follows it (World War I?, Henry V), because the pronoun "I" is nearly always followed by a verb.
    """
    if len(raw) > 1:
        return True
    prev = prev_word.lower().replace("’", "'").split("'", 1)[0]
    if sentence_start or prev in _AUX or prev_word.lower().endswith(("n't", "n’t")):
        return False
    rest = text[end:].lstrip()
    return not rest or not rest[0].isalpha()


_Token = tuple[str, int, int, str, str]  # (kind, start, end, text, number suffix)


def _tokens(text: str) -> Iterable[_Token]:
    """Tokens of ``text`` with every digit run taken out as a number of its own.

    Why: a number glued to letters still decides the answer (q1/q2, v1/v2, 7am/7pm, A17, 5mg).
    A number's suffix stays with it when it changes the number's meaning (3rd: ordinal, 100k:
    times 1000, 7pm: the clock half); any other suffix (5mg, 10GB, 3D) becomes a word of its own
    after the number, as if a space were there. A word with digits inside (v1, iPhone14, b2b)
    keeps its letters as the word and gives each digit run as a number after it.
    """
    for m in _TOKEN_RE.finditer(text):
        kind = m.lastgroup or ""
        start, end = m.start(), m.end()
        if kind in ("num", "numsuf"):
            digits = m.group("num")
            suf = m.group("numsuf") or ""
            low = suf.lower()
            if not suf or low in _ORD_SUFFIXES or low in ("k", "am", "pm"):
                yield ("num", start, end, digits, low)
            else:
                yield ("num", start, start + len(digits), digits, "")
                yield ("word", start + len(digits), end, suf, "")
        elif kind == "word":
            word = m.group("word")
            yield ("word", start, end, word, "")
            for d in _DIGITS_RE.finditer(word):
                yield ("num", start + d.start(), start + d.end(), d.group(0), "")
        else:
            yield (kind, start, end, m.group(kind), "")


@lru_cache(maxsize=4096)
def analyse(text: str) -> Analysis:
    """Analyse one question (cached: a cached question is compared against many new ones).

    The returned object is shared between calls: do not mutate it.
    """
    a = Analysis()
    text = _AMPM_RE.sub(r"\1\2m", text)  # 7 p.m. = 7pm
    text = _PHRASE_RE.sub(_phrase_sub, text)  # the United States = the USA
    han = latin = kana = hangul = 0
    anchors: list[tuple[int, str]] = []  # (position, normalised token) for relation sides
    sentence_start = True
    prev_word = ""
    prev_cap = False
    pending_num: tuple[int, int] | None = None  # (value, index in words) of an English number
    en_tokens: list[tuple[int, str]] = []  # (position, stem or marker) for relations
    for kind, start, end, tok, suffix in _tokens(text):
        if kind == "num":
            raw = tok
            value: object
            if _THOUSANDS_RE.match(raw):
                value = int(raw.replace(",", ""))
            elif "," in raw:
                value = raw.replace(",", ".")
            elif "." in raw:
                value = raw
            else:
                value = int(raw)
            rest = text[end : end + 1]
            if suffix == "k" and isinstance(value, int):
                value *= 1000
            elif rest in _ZH_MULT and isinstance(value, int):  # 3万 = 30000
                value *= _ZH_MULT[rest]
            # 7am and 7pm are different times; "ord" for 3rd; "card" for plain numbers.
            kind_ = (
                "ord" if suffix in _ORD_SUFFIXES else suffix if suffix in ("am", "pm") else "card"
            )
            a.numbers[(kind_, value)] += 1
            latin += 1
            pending_num = (0, len(a.words))
            en_tokens.append((start, f"#{value}"))
            anchors.append((start, f"#{value}"))
            sentence_start = False
            prev_cap = False
            prev_word = raw
            continue
        if kind == "cjk":
            chunk = tok
            han += len(chunk)
            _scan_zh(chunk, a, start, anchors)
            a.zh_relations.extend(_zh_relations(chunk))
            sentence_start = False
            continue
        if kind == "kana":
            kana += len(tok)
            continue
        if kind == "hangul":
            hangul += len(tok)
            continue
        if kind == "arrow":
            en_tokens.append((start, "->"))
            continue
        if kind == "punct":
            p = tok
            if p in ".?!。？！;；:：":
                sentence_start = True
            en_tokens.append((start, "|"))
            continue
        # An English word.
        raw = tok
        latin += 1
        low = raw.lower().replace("’", "'")
        if low.endswith("n't"):
            base = _CONTRACTION_NOT.get(low, low[:-3])
            a.negations += 1
            low = base
        elif "'" in low:
            low = low.split("'", 1)[0]
        if not low.isalpha() and any(ch.isdigit() for ch in low):
            # v1 -> "v", b2b -> "b#b": the digits are counted as numbers (see _tokens), so
            # "iPhone14" and "iPhone 14" are one name and v1/v2 differ only by their number.
            low = _DIGITS_RE.sub("#", low).rstrip("#")
        a.words.append(low)
        is_cap = raw[0].isupper()
        if low in _NEG_WORDS:
            a.negations += 1
        # Numbers in words. A number word is never a name, capitalised or not ("the Second
        # World War" = "the 2nd World War"): the numbers rule already compares it.
        number_word = True
        if low in _EN_ONES or low in _EN_TENS:
            v = _EN_ONES.get(low, _EN_TENS.get(low, 0))
            if low == "one":
                a.soft_ones += 1
            else:
                a.numbers[("card", v)] += 1
        elif low in _EN_MULT and low != "k":
            a.numbers[("card", _EN_MULT[low])] += 1
        elif low in _EN_ORD and not (
            low == "second" and prev_word.lower() in ("a", "per", "one", "each", "every")
        ):
            a.numbers[("ord", _EN_ORD[low])] += 1
        else:
            number_word = False
        if (
            not number_word
            and raw.isupper()
            and _ROMAN_RE.match(raw)
            and prev_cap
            and _roman_here(raw, text, end, sentence_start, prev_word)
        ):
            value = 0
            prev_v = 0
            for ch in reversed(raw.lower()):
                v = _ROMAN[ch]
                value = value - v if v < prev_v else value + v
                prev_v = max(prev_v, v)
            a.numbers[("card", value)] += 1
            sentence_start = False
            prev_word = raw
            continue
        stem = _stem(low)
        a.tokens.add(stem)
        # Negative-prefix words (unsafe): remember their base to meet "safe" on the other side.
        for pre in _NEG_PREFIXES:
            if low.startswith(pre) and len(low) - len(pre) >= 4 and low not in _EN_KNOWN:
                a.neg_prefixed.add(_stem(low[len(pre) :]))
        if stem in _EN_GROUPS:
            a.contrast[stem] += 1
            a.contrast_group[stem] = _EN_GROUPS[stem]
        if stem in _EN_UNIT_STEMS and not (stem == "second" and pending_num is None):
            a.units[stem] += 1
            a.unit_dim[stem] = _EN_UNIT_STEMS[stem]
        # Names: known list anywhere; capitals/acronyms when not the first word of a sentence.
        name = _canon_name(low) if low != "us" or raw == "US" else low  # us: a pronoun
        known = name in _EN_KNOWN or (low in _EN_ALIASES and name != low)
        looks_like_name = (
            (is_cap and not sentence_start and low != "i")
            or (len(raw) >= 2 and raw.isupper() and low != "i")
            or any(ch.isupper() for ch in raw[1:])
        )
        if han > 0 and len(low) >= 2:
            looks_like_name = True  # a Latin word inside Chinese text is a name or a term
        if not number_word and (known or (looks_like_name and low not in _STOP)):
            a.entities.add(name)
        a.tokens.add(name)
        if low in _EN_MARKERS:
            en_tokens.append((start, low))
        elif low not in _STOP:
            en_tokens.append((start, name if (known or looks_like_name) else stem))
        sentence_start = False
        prev_cap = is_cap
        prev_word = raw
    # Language by dominant script: each Han/kana/hangul character counts about half a word.
    scores = {"zh": han / 2, "en": float(latin), "ja": kana / 2 + (han / 4 if kana else 0)}
    scores["ko"] = hangul / 2
    best = max(scores, key=lambda k: scores[k])
    a.lang = best if scores[best] > 0 else "other"
    if kana and scores["ja"] > 0:
        a.lang = "ja" if kana * 2 >= han / 4 or scores["ja"] >= scores["en"] else a.lang
    a.relations = _en_relations(en_tokens)
    return a


def _en_relations(tokens: list[tuple[int, str]]) -> list[tuple[frozenset[str], frozenset[str]]]:
    """(source side, target side) of each English relation marker, up to 3 content words each."""
    out = []
    words = [t for _, t in tokens]
    for k, w in enumerate(words):
        if w not in _EN_MARKERS:
            continue
        left: list[str] = []
        for x in reversed(words[:k]):
            if x in _EN_MARKERS or x == "|" or len(left) == 3:
                break
            left.append(x)
        right: list[str] = []
        for x in words[k + 1 :]:
            if x in _EN_MARKERS or x == "|" or len(right) == 3:
                break
            right.append(x)
        if left and right:
            pair = (frozenset(left), frozenset(right))
            out.append((pair[1], pair[0]) if _EN_MARKERS[w] else pair)
    return out


def _acronym_of(acronym: str, words: list[str]) -> bool:
    """Is ``acronym`` the initials of consecutive words (API: application programming interface)?

    Why: an abbreviation against its long form is a paraphrase, not another entity.
    """
    n = len(acronym)
    if n < 2 or n > 6:
        return False
    content = [w for w in words if w not in ("of", "and", "the", "for", "a", "an")]
    initials = "".join(w[0] for w in content)
    return acronym in initials


# --------------------------------------------------------------------------------------------
# Rules: each compares two analyses and returns a reason or None.
# --------------------------------------------------------------------------------------------


def _rule_language(x: Analysis, y: Analysis) -> str | None:
    if x.lang != y.lang and "other" not in (x.lang, y.lang):
        return "language"
    return None


def _rule_numbers(x: Analysis, y: Analysis) -> str | None:
    if x.numbers != y.numbers:
        # A lone "one"/一 may stand where the other side writes 1 (or nothing at all).
        xs = x.numbers + Counter({("card", 1): x.soft_ones}) if x.soft_ones else x.numbers
        ys = y.numbers + Counter({("card", 1): y.soft_ones}) if y.soft_ones else y.numbers
        if xs != ys:
            return "number mismatch"
    if _crossing(x.units, y.units, lambda u, v: x.unit_dim.get(u) == y.unit_dim.get(v)):
        return "unit mismatch"
    return None


def _rule_negation(x: Analysis, y: Analysis) -> str | None:
    if x.negations != y.negations:
        return "negation"
    # unsafe vs safe: a negative-prefixed word on one side whose base is only on the other.
    if (x.neg_prefixed & (y.tokens - x.tokens)) or (y.neg_prefixed & (x.tokens - y.tokens)):
        return "negation"
    return None


def _rule_antonyms(x: Analysis, y: Analysis) -> str | None:
    def related(u: str, v: str) -> bool:
        return any(
            g1 == g2 and s1 != s2
            for g1, s1 in x.contrast_group.get(u, ())
            for g2, s2 in y.contrast_group.get(v, ())
        )

    if _crossing(x.contrast, y.contrast, related):
        return "antonym"
    return None


_Related = Callable[[str, str], bool]


def _crossing(xc: Counter[str], yc: Counter[str], related: _Related) -> bool:
    """Does x have more of some term u and y more of a different, related term v?"""
    if not xc or not yc or xc == yc:
        return False
    more_x = [u for u in xc if xc[u] > yc.get(u, 0)]
    if not more_x:
        return False
    more_y = [v for v in yc if yc[v] > xc.get(v, 0)]
    return any(u != v and related(u, v) for u in more_x for v in more_y)


def _rule_entities(x: Analysis, y: Analysis) -> str | None:
    for a, b in ((x, y), (y, x)):
        for name in a.entities - b.entities:
            if name in b.tokens or name.replace(" ", "") in b.tokens:
                continue  # same word, only its case or position differs
            if name.isascii() and _acronym_of(name, b.words):
                continue
            if " " in name and all(part in b.tokens for part in name.split()):
                continue
            return "entity"
    return None


def _rule_direction(x: Analysis, y: Analysis) -> str | None:
    for l1, r1 in x.relations:
        for l2, r2 in y.relations:
            if (l1 & r2) - l2 and (r1 & l2) - r2:
                return "direction"
    for sl1, sr1 in x.zh_relations:
        for sl2, sr2 in y.zh_relations:
            if (
                _share(sl1, sr2)
                and _share(sr1, sl2)
                and not (_share(sl1, sl2) and _share(sr1, sr2))
            ):
                return "direction"
    return None


_RULES = (
    ("language", _rule_language),
    ("numbers", _rule_numbers),
    ("negation", _rule_negation),
    ("antonyms", _rule_antonyms),
    ("entities", _rule_entities),
    ("direction", _rule_direction),
)


class Guard:
    """The guard with a configuration: ``Guard(GuardConfig(numbers=False)).check(a, b)``."""

    __slots__ = ("_rules", "config")

    def __init__(self, config: GuardConfig | None = None) -> None:
        self.config = config or GuardConfig()
        self._rules = tuple(rule for name, rule in _RULES if getattr(self.config, name))

    def check(self, cached: str, new: str) -> str | None:
        """None if ``cached``'s answer may serve ``new``; otherwise the reason it may not."""
        if cached == new:
            return None
        x, y = analyse(cached), analyse(new)
        for rule in self._rules:
            reason = rule(x, y)
            if reason is not None:
                return reason
        return None

    __call__ = check


_GUARDS: dict[GuardConfig, Guard] = {}


def check(cached: str, new: str, config: GuardConfig | None = None) -> str | None:
    """None if ``cached``'s answer may serve ``new``, else the reason (e.g. "negation").

    ``config`` picks the rules (default: all on); one :class:`Guard` is kept per configuration.
    """
    key = config if config is not None else _DEFAULT_CONFIG
    guard = _GUARDS.get(key)
    if guard is None:
        guard = _GUARDS[key] = Guard(key)
    return guard.check(cached, new)


_DEFAULT_CONFIG = GuardConfig()
